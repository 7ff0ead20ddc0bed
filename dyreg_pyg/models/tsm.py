"""Temporal Shift Module (Lin et al., ICCV 2019), "blockres" placement for timm ResNets."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["temporal_shift", "TemporalShift", "add_temporal_shift"]


def temporal_shift(x: Tensor, num_frames: int, fold_div: int = 8) -> Tensor:
    """Shift ``C / fold_div`` channels one step back in time and as many forward.

    ``x [B*T, C, H, W]``: channels ``[0, C/fold)`` take the value of frame ``t + 1`` (shift
    towards the past), channels ``[C/fold, 2C/fold)`` take frame ``t - 1``; the rest stay. The
    clip ends are zero-padded.
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected [B*T, C, H, W], got shape {tuple(x.shape)}")
    if fold_div < 2:
        raise ValueError(f"fold_div: expected >= 2 (two folds are shifted), got {fold_div}")
    bt, c, h, w = x.shape
    if bt % num_frames:
        raise ValueError(
            f"x: batch dimension {bt} is not a multiple of num_frames={num_frames}"
        )
    x = x.view(bt // num_frames, num_frames, c, h, w)
    fold = c // fold_div
    out = x.new_zeros(x.shape)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(bt, c, h, w)


class TemporalShift(nn.Module):
    """Wraps a layer (a block's first conv) so its input is temporally shifted first."""

    def __init__(self, layer: nn.Module, num_frames: int, fold_div: int = 8) -> None:
        super().__init__()
        self.layer, self.num_frames, self.fold_div = layer, num_frames, fold_div

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(temporal_shift(x, self.num_frames, self.fold_div))

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, fold_div={self.fold_div}"


def add_temporal_shift(model: nn.Module, num_frames: int, fold_div: int = 8) -> int:
    """Insert the shift in the residual branch (``conv1``) of every ResNet block of a timm
    ResNet-family model (TSM's "blockres" placement: the shortcut sees the unshifted input);
    returns the number of blocks shifted.

    Raises:
        ValueError: the model has no ``BasicBlock`` / ``Bottleneck`` blocks.
    """
    count = 0
    for module in model.modules():
        if type(module).__name__ in ("BasicBlock", "Bottleneck") and hasattr(module, "conv1"):
            if not isinstance(module.conv1, TemporalShift):
                module.conv1 = TemporalShift(module.conv1, num_frames, fold_div)
                count += 1
    if count == 0:
        raise ValueError(
            "shift: temporal shift supports timm ResNet-family models (BasicBlock/Bottleneck)"
        )
    return count

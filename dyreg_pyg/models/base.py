"""What the 2-D (:mod:`.factory`) and 3-D (:mod:`.video3d`) model builders share.

:class:`VideoModel` (clip in, logits out), the adapter that runs a
:class:`~dyreg_pyg.module.DyRegBlock` on a backbone block's output (:func:`attach_dyreg`), the
dummy forward that finds the blocks' feature-map shapes (:func:`probe_maps`) and the checks
of the builders' arguments. Both builders import this module; it imports neither of them.

A DyReg block is attached to a backbone block as its child ``dyreg_after`` and run by a
forward hook on that block - or, for a plain ``nn.Sequential``, which runs every child in
order, as its last child (a hook as well would run it twice) -, so the backbone keeps its own
module tree and parameter names (a pretrained state dict loads unchanged) and the block names
used in ``dyreg_at`` are exactly ``backbone.named_modules()`` names.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..module import DyRegBlock, DyRegConfig

__all__ = [
    "ATTACHMENT_NAME", "VideoModel", "attach_dyreg", "feature_map_blocks", "probe_maps",
    "check_block_names", "block_config", "as_config", "size_pair",
]

ATTACHMENT_NAME = "dyreg_after"
"""Child-module name under which a DyReg block hangs off the backbone block it follows."""


class _DyRegAttachment(nn.Module):
    """Base of the adapters that run a :class:`DyRegBlock` on a backbone block's output."""

    def __init__(self, dyreg: DyRegBlock) -> None:
        super().__init__()
        self.dyreg = dyreg
        #: ``[B, T, N, 4]`` regions for ``regions="external"``, set by
        #: :meth:`VideoModel.forward` for the duration of one forward pass.
        self.regions: Tensor | None = None


class _DyRegAfter2D(_DyRegAttachment):
    """DyReg on the ``[B*T, C, H, W]`` output of a per-frame 2-D block, unfolded to
    ``[B, T, C, H, W]`` and folded back."""

    def __init__(self, dyreg: DyRegBlock, num_frames: int) -> None:
        super().__init__(dyreg)
        self.num_frames = num_frames

    def forward(self, y: Tensor) -> Tensor:
        bt, c, h, w = y.shape
        t = self.num_frames
        return self.dyreg(y.view(bt // t, t, c, h, w), self.regions).view(bt, c, h, w)


class _DyRegAfter3D(_DyRegAttachment):
    """DyReg on the ``[B, C, T, H, W]`` output of a 3-D block (permuted to ``[B, T, C, H, W]``)."""

    def forward(self, y: Tensor) -> Tensor:
        return self.dyreg(y.transpose(1, 2), self.regions).transpose(1, 2)


def _run_attachment(module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    return getattr(module, ATTACHMENT_NAME)(output)


def attach_dyreg(block: nn.Module, dyreg: DyRegBlock, num_frames: int | None = None) -> None:
    """Run ``dyreg`` on the output of ``block`` (in place).

    Args:
        block: a backbone module whose output is ``[B*T, C, H, W]`` (2-D backbone run per
            frame; give ``num_frames``) or ``[B, C, T, H, W]`` (3-D backbone; ``num_frames=None``).
        dyreg: the block to run; it is registered as ``block.dyreg_after.dyreg``.
        num_frames: ``T`` folded into the batch of a 2-D backbone.
    """
    if hasattr(block, ATTACHMENT_NAME):
        raise ValueError(f"block: {type(block).__name__} already has a DyReg block attached")
    adapter = _DyRegAfter3D(dyreg) if num_frames is None else _DyRegAfter2D(dyreg, num_frames)
    block.add_module(ATTACHMENT_NAME, adapter)
    if type(block).forward is not nn.Sequential.forward:  # a Sequential runs its children,
        block.register_forward_hook(_run_attachment)  # the attachment last: no hook there


@torch.no_grad()
def probe_maps(model: nn.Module, input_shape: Sequence[int], dims: int
               ) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """One dummy forward (eval mode): ``{name: output shape without batch}`` for every module
    whose output is a ``dims``-D tensor, in execution order, and the model's output shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, Tensor) and out.dim() == dims:
                shapes[name] = tuple(out.shape[1:])

        hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes, tuple(out.shape)


def feature_map_blocks(model: nn.Module, input_shape: Sequence[int],
                       dims: int = 4) -> dict[str, tuple[int, ...]]:
    """Dotted names of the modules of ``model`` whose output is a ``dims``-D map, with the
    map's shape without the batch dimension, from one dummy forward at ``input_shape``."""
    return probe_maps(model, input_shape, dims)[0]


def check_block_names(names: Sequence[str], net: nn.Module,
                      shapes: dict[str, tuple[int, ...]], dims: int) -> None:
    """Raise ``ValueError`` unless ``names`` (``dyreg_at``) is a list of distinct modules of
    ``net`` with a ``dims``-D output (``shapes`` from :func:`probe_maps`); the message lists
    close names and the valid block names."""
    if isinstance(names, str):
        raise ValueError(f"dyreg_at: expected a list of block names, got the string {names!r}")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"dyreg_at: block names given more than once: {dup}")
    for name in names:
        if name in shapes:
            continue
        # Blocks (modules with children) are the useful insertion points; any module with a
        # dims-D output is accepted.
        blocks = [n for n in shapes if any(True for _ in net.get_submodule(n).children())]
        close = difflib.get_close_matches(name, list(shapes), n=3)
        why = "is not a module of the backbone" if name not in dict(net.named_modules()) \
            else f"does not output a {dims}-D map"
        raise ValueError(
            f"dyreg_at: {name!r} {why}; close names: {close}; valid block names: {blocks}"
        )


def block_config(cfg: DyRegConfig, height: int, width: int) -> DyRegConfig:
    """``cfg`` with ``spatial_size`` set to the block's map size unless the caller fixed it."""
    return cfg.replace(spatial_size=cfg.spatial_size or (height, width))


def as_config(dyreg: dict[str, Any] | DyRegConfig | None) -> DyRegConfig:
    """The builders' ``dyreg`` argument (a dict of fields, a config or ``None``) as a
    :class:`~dyreg_pyg.module.DyRegConfig`."""
    if dyreg is None or isinstance(dyreg, dict):
        return DyRegConfig.from_dict(dyreg)
    if isinstance(dyreg, DyRegConfig):
        return dyreg
    raise ValueError(f"dyreg: expected a dict, a DyRegConfig or None, got {type(dyreg).__name__}")


def size_pair(input_size: int | Sequence[int], name: str = "input_size") -> tuple[int, int]:
    """``H`` or ``(..., H, W)`` as ``(H, W)``; ``ValueError`` naming ``name`` if not positive."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)[-2:]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name}: expected a positive int or (H, W), got {input_size!r}")
    return int(size[0]), int(size[1])


class VideoModel(nn.Module):
    """Clip ``[B, T, C, H, W]`` -> logits ``[B, num_classes]``.

    Frames are folded into the batch for the 2-D backbone; each DyReg block unfolds
    ``(B, T)`` around itself. Head: spatial and temporal average (the consensus), dropout,
    linear.

    Args:
        backbone: the feature extractor; maps ``[B*T, C_in, H, W]`` to ``[B*T, C, h, w]``.
        num_classes: classifier outputs.
        num_frames: ``T`` the model was built for.
        feature_channels: ``C`` of the backbone output.
        drop_rate: dropout before the classifier (paper: 0.5).
        in_chans: input channels ``C_in``.
        input_size: the ``(H, W)`` feature-map sizes were inferred at (the default frame size).
        fixed_frames: clips must have exactly ``num_frames`` frames (temporal shift or DyReg
            blocks fold time into the batch).

    Shapes:
        - **input:** ``clip [B, T, C_in, H, W]``, float, normalised
        - **output:** ``[B, num_classes]``
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int,
                 feature_channels: int, drop_rate: float = 0.5, in_chans: int = 3,
                 input_size: tuple[int, int] = (224, 224), fixed_frames: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.in_chans = in_chans
        self.input_size = tuple(input_size)
        self.fixed_frames = fixed_frames
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(feature_channels, num_classes)

    def dyreg_blocks(self) -> dict[str, DyRegBlock]:
        """DyReg blocks by the dotted backbone name of the block they follow (the names given
        to ``dyreg_at``). Set ``block.record = True`` to keep each forward's
        :class:`~dyreg_pyg.module.DyRegDetails` in ``block.last``."""
        suffix = "." + ATTACHMENT_NAME
        return {name.removeprefix("backbone.").removesuffix(suffix): m.dyreg
                for name, m in self.named_modules() if isinstance(m, _DyRegAttachment)}

    def check_clip(self, clip: Tensor) -> None:
        """Raise ``ValueError`` unless ``clip`` is ``[B, T, in_chans, H, W]`` with the
        model's ``T`` (where it needs one)."""
        if clip.dim() != 5:
            raise ValueError(f"clip: expected [B, T, C, H, W], got shape {tuple(clip.shape)}")
        if clip.shape[2] != self.in_chans:
            raise ValueError(
                f"clip: expected C={self.in_chans} channels at dim 2 of [B, T, C, H, W], got "
                f"shape {tuple(clip.shape)}"
            )
        if self.fixed_frames and clip.shape[1] != self.num_frames:
            raise ValueError(
                f"clip: the model was built for num_frames={self.num_frames} (temporal shift / "
                f"DyReg fold time into the batch), got T={clip.shape[1]} "
                f"(shape {tuple(clip.shape)})"
            )

    def forward_features(self, clip: Tensor) -> Tensor:
        """Backbone features averaged over space and time: ``[B, C]``."""
        b, t = clip.shape[:2]
        feats = self.backbone(clip.flatten(0, 1))  # [B*T, C, h, w]
        return feats.mean((-2, -1)).view(b, t, -1).mean(1)  # consensus

    def needs_regions(self) -> bool:
        """Whether a DyReg block takes its regions from the caller (``regions="external"``)."""
        return any(b.gnn.config.regions == "external" for b in self.dyreg_blocks().values())

    def forward(self, clip: Tensor, regions: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]`` of ``clip [B, T, C, H, W]``. ``regions [B, T, N, 4]``
        (``(cx, cy, w, h)`` normalised to the frame) go to every DyReg block with
        ``regions="external"``, e.g. ground-truth object boxes as an oracle."""
        self.check_clip(clip)
        if regions is None:  # the attachments hold none between calls
            return self.fc(self.dropout(self.forward_features(clip)))
        attachments = [
            m for m in self.modules()
            if isinstance(m, _DyRegAttachment) and m.dyreg.gnn.config.regions == "external"
        ]
        for a in attachments:
            a.regions = regions
        try:
            return self.fc(self.dropout(self.forward_features(clip)))
        finally:
            for a in attachments:
                a.regions = None

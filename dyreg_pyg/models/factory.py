"""Video models: a timm 2-D backbone run per frame, DyReg blocks inserted by block name."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from ..module import DyRegBlock, DyRegConfig
from .tsm import add_temporal_shift

__all__ = ["VideoModel", "build_video_model", "feature_map_blocks"]

log = logging.getLogger(__name__)


class _DyRegAfter(nn.Module):
    """A :class:`DyRegBlock` applied to the ``[B*T, C, H, W]`` output of the backbone block it
    is attached to, unfolded to ``[B, T, C, H, W]``. It is registered as the child ``dyreg``
    of that block and run by a forward hook, so the backbone's own parameter names (and
    pretrained state dicts) are unchanged."""

    def __init__(self, dyreg: DyRegBlock, num_frames: int) -> None:
        super().__init__()
        self.dyreg, self.num_frames = dyreg, num_frames

    def forward(self, y: Tensor) -> Tensor:
        bt, c, h, w = y.shape
        t = self.num_frames
        return self.dyreg(y.view(bt // t, t, c, h, w)).view(bt, c, h, w)


def _run_dyreg_hook(module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    return module.dyreg_after(output)


def _attach(block: nn.Module, dyreg: DyRegBlock, num_frames: int) -> None:
    block.add_module("dyreg_after", _DyRegAfter(dyreg, num_frames))
    block.register_forward_hook(_run_dyreg_hook)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def feature_map_blocks(model: nn.Module, input_shape: Sequence[int],
                       dims: int = 4) -> dict[str, tuple]:
    """Dotted names of the modules whose output is a ``dims``-D map, with the map's shape
    without the batch dimension, from one dummy forward at ``input_shape``."""
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, Tensor) and out.dim() == dims:
                shapes[name] = tuple(out.shape[1:])

        hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


class VideoModel(nn.Module):
    """Clip ``[B, T, C, H, W]`` -> logits ``[B, num_classes]``.

    Frames are folded into the batch for the 2-D backbone; each DyReg block unfolds
    ``(B, T)`` around itself. Head: spatial and temporal average (consensus), dropout, linear.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int,
                 feature_channels: int, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(feature_channels, num_classes)

    def dyreg_blocks(self) -> dict[str, DyRegBlock]:
        """DyReg blocks by the dotted name of the backbone block they follow."""
        return {name.removeprefix("backbone.").removesuffix(".dyreg_after"): m.dyreg
                for name, m in self.named_modules() if isinstance(m, _DyRegAfter)}

    def forward(self, clip: Tensor) -> Tensor:
        if clip.dim() != 5:
            raise ValueError(f"clip: expected [B, T, C, H, W], got shape {tuple(clip.shape)}")
        b, t = clip.shape[:2]
        if t != self.num_frames:
            raise ValueError(
                f"clip: the model was built for num_frames={self.num_frames} (DyReg/TSM fold "
                f"time into the batch), got T={t}"
            )
        feats = self.backbone(clip.flatten(0, 1))  # [B*T, C, H, W]
        pooled = feats.mean((-2, -1)).view(b, t, -1).mean(1)  # consensus
        return self.fc(self.dropout(pooled))


def build_video_model(
    backbone: str,
    num_classes: int,
    num_frames: int,
    dyreg_at: Sequence[str] = (),
    dyreg: dict[str, Any] | DyRegConfig | None = None,
    shift: bool = False,
    in_chans: int = 3,
    pretrained_file: str | None = None,
    drop_rate: float = 0.5,
    input_size: int = 224,
    remove_stages: Sequence[str] = (),
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a video model from a timm backbone name (or a torchvision video ResNet).

    Args:
        backbone: any ``timm`` model name producing 4-D feature maps (resnet50, regnety_002,
            convnext_atto, ...), created with ``timm.create_model``.
        num_classes: classifier outputs.
        num_frames: ``T`` of the clips (needed by DyReg and TSM).
        dyreg_at: dotted names of backbone blocks after which a :class:`DyRegBlock` goes
            (e.g. ``["layer2.2", "layer3.4", "layer4.1"]``); channels and map sizes are inferred.
            ``r3d_18``, ``r2plus1d_18`` and ``mc3_18`` (torchvision) give a 3-D model whose
            DyReg blocks act on ``[B, C, T, H, W]`` maps.
        dyreg: :class:`DyRegConfig` fields for every inserted block.
        shift: add the temporal shift (TSM, 1/8 forward + 1/8 backward) to every residual block.
        in_chans: input channels (1 for MultiSyncMNIST).
        pretrained_file: local ImageNet weights for the backbone (timm state dict); the hub is
            never contacted.
        input_size: frame size used to infer feature-map sizes.
        remove_stages: backbone children replaced by identity (e.g. ``["layer4"]`` for the
            3-stage ResNet-18 of the MultiSyncMNIST experiments).
    """
    if timm_kwargs.pop("pretrained", False):
        raise ValueError(
            "pretrained: hub weights are not downloaded; pass pretrained_file=<local file>"
        )
    from .video3d import VIDEO_RESNETS, build_video3d_model

    if backbone in VIDEO_RESNETS:
        if shift or pretrained_file or remove_stages:
            raise ValueError("backbone: shift/pretrained_file/remove_stages are for 2-D backbones")
        return build_video3d_model(backbone, num_classes, num_frames, dyreg_at, dyreg,
                                   drop_rate, input_size, in_chans)
    if backbone not in timm.list_models():
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5)
        raise ValueError(f"backbone: unknown timm model {backbone!r}; close names: {close}")
    net = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="",
                            in_chans=in_chans, **timm_kwargs)
    if pretrained_file:
        state = torch.load(pretrained_file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        missing, unexpected = net.load_state_dict(state, strict=False)
        log.info("loaded %s (missing %d, unexpected %d keys, e.g. the classifier)",
                 pretrained_file, len(missing), len(unexpected))
    for stage in remove_stages:
        _set(net, stage, nn.Identity())
    if shift:
        add_temporal_shift(net, num_frames)
    shapes = feature_map_blocks(net, (num_frames, in_chans, input_size, input_size))
    feature_channels = net(torch.zeros(num_frames, in_chans, input_size, input_size)).shape[1] \
        if not shapes else _out_channels(net, num_frames, in_chans, input_size)
    cfg = dyreg if isinstance(dyreg, DyRegConfig) else DyRegConfig.from_dict(dyreg or {})
    for name in dyreg_at:
        if name not in shapes:
            raise ValueError(
                f"dyreg_at: {name!r} is not a block with a 4-D output; valid names: "
                f"{sorted(shapes)}"
            )
        c, h, w = shapes[name]
        block_cfg = DyRegConfig.from_dict({**cfg.to_dict(), "gnn": cfg.gnn,
                                           "spatial_size": cfg.spatial_size or (h, w)})
        _attach(net.get_submodule(name), DyRegBlock(c, block_cfg), num_frames)
    return VideoModel(net, num_classes, num_frames, feature_channels, drop_rate)


@torch.no_grad()
def _out_channels(net: nn.Module, t: int, c: int, s: int) -> int:
    was = net.training
    net.eval()
    try:
        return int(net(torch.zeros(t, c, s, s)).shape[1])
    finally:
        net.train(was)

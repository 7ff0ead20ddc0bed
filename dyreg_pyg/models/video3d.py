"""3-D backbones (torchvision's video ResNets) with DyReg blocks on their [B, C, T, H, W] maps."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..module import DyRegBlock, DyRegConfig
from .base import (
    VideoModel,
    as_config,
    attach_dyreg,
    block_config,
    check_block_names,
    probe_maps,
    size_pair,
)

__all__ = ["VIDEO_RESNETS", "Video3DModel", "build_video3d_model"]

log = logging.getLogger(__name__)

VIDEO_RESNETS = ("r3d_18", "r2plus1d_18", "mc3_18")
"""torchvision video ResNets accepted as backbones (Table 2 of the paper uses an I3D-R50)."""


class Video3DModel(VideoModel):
    """Clip ``[B, T, C, H, W]`` -> logits; the backbone sees ``[B, C, T, H, W]`` and returns
    ``[B, C', T', H', W']``, averaged over time and space before dropout and the classifier.

    The 3-D backbone accepts any ``T`` (``fixed_frames=False``): DyReg blocks act on the
    temporal length of their own map.
    """

    def forward_features(self, clip: Tensor) -> Tensor:
        return self.backbone(clip.transpose(1, 2)).mean((2, 3, 4))


def _features(net: nn.Module, in_chans: int) -> nn.Sequential:
    """The stem and four stages of a torchvision ``VideoResNet`` (names kept), with the stem
    convolution re-made for ``in_chans`` inputs when that differs from 3 (as timm adapts 2-D
    stems: one channel sums the RGB filters, more repeat them scaled by ``3 / in_chans``)."""
    if in_chans != 3:
        conv = net.stem[0]
        new = nn.Conv3d(in_chans, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, bias=conv.bias is not None)
        with torch.no_grad():
            w = conv.weight  # [out, 3, kt, kh, kw]
            if in_chans == 1:
                new.weight.copy_(w.sum(1, keepdim=True))
            else:
                reps = -(-in_chans // 3)
                new.weight.copy_(w.repeat(1, reps, 1, 1, 1)[:, :in_chans] * (3 / in_chans))
        net.stem[0] = new
    return nn.Sequential(OrderedDict(
        (name, getattr(net, name)) for name in ("stem", "layer1", "layer2", "layer3", "layer4")
    ))


def build_video3d_model(
    backbone: str,
    num_classes: int,
    num_frames: int,
    dyreg_at: Sequence[str] = (),
    dyreg: dict | DyRegConfig | None = None,
    drop_rate: float = 0.5,
    input_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    pretrained_file: str | None = None,
) -> Video3DModel:
    """A torchvision video ResNet (``r3d_18``, ``r2plus1d_18``, ``mc3_18``) with DyReg blocks
    after the named blocks (e.g. ``["layer3"]`` or ``["layer3.1"]``).

    Args:
        backbone: one of :data:`VIDEO_RESNETS`.
        num_classes, num_frames, dyreg_at, dyreg, drop_rate, in_chans: as in
            :func:`~dyreg_pyg.models.build_video_model`.
        input_size: frame size of the dummy forward that infers map sizes (default 112, the
            Kinetics size of these models).
        pretrained_file: a local torchvision state dict of the same architecture (its ``fc``
            is dropped); loaded with ``weights_only=True``.
    """
    import torchvision.models.video as tvv

    if backbone not in VIDEO_RESNETS:
        raise ValueError(f"backbone: expected one of {VIDEO_RESNETS}, got {backbone!r}")
    net = getattr(tvv, backbone)(weights=None)
    if pretrained_file is not None:
        state = torch.load(pretrained_file, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing = [k for k in net.load_state_dict(state, strict=False).missing_keys
                   if not k.startswith("fc.")]
        if missing:
            raise ValueError(f"pretrained_file: {pretrained_file!r} lacks {len(missing)} keys of "
                             f"{backbone!r}, e.g. {missing[:3]}")
        log.info("%s: loaded weights from %s", backbone, pretrained_file)
    features = _features(net, in_chans)
    size = size_pair(112 if input_size is None else input_size)
    shapes, out_shape = probe_maps(features, (1, in_chans, num_frames, *size), dims=5)
    cfg = as_config(dyreg)
    check_block_names(dyreg_at, features, shapes, dims=5)
    for name in dyreg_at:
        c, _t, h, w = shapes[name]
        attach_dyreg(features.get_submodule(name), DyRegBlock(c, block_config(cfg, h, w)))
    return Video3DModel(features, num_classes, num_frames, out_shape[1], drop_rate, in_chans,
                        size, fixed_frames=False)

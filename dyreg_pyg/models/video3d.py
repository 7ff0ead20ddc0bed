"""3-D backbones (torchvision's video ResNets) with DyReg blocks on their [B, C, T, H, W] maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..module import DyRegBlock, DyRegConfig
from .factory import feature_map_blocks

__all__ = ["VIDEO_RESNETS", "Video3DModel", "build_video3d_model"]

VIDEO_RESNETS = ("r3d_18", "r2plus1d_18", "mc3_18")


class _DyReg3D(nn.Module):
    """A :class:`DyRegBlock` on a ``[B, C, T, H, W]`` map (permuted to ``[B, T, C, H, W]``)."""

    def __init__(self, dyreg: DyRegBlock) -> None:
        super().__init__()
        self.dyreg = dyreg

    def forward(self, y: Tensor) -> Tensor:
        return self.dyreg(y.transpose(1, 2)).transpose(1, 2)


def _hook(module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    return module.dyreg_after(output)


class Video3DModel(nn.Module):
    """Clip ``[B, T, C, H, W]`` -> logits; the backbone sees ``[B, C, T, H, W]``."""

    def __init__(self, backbone: nn.Module, num_classes: int, num_frames: int,
                 feature_channels: int, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.backbone, self.num_classes, self.num_frames = backbone, num_classes, num_frames
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(feature_channels, num_classes)

    def dyreg_blocks(self) -> dict[str, DyRegBlock]:
        return {name.removeprefix("backbone.").removesuffix(".dyreg_after"): m.dyreg
                for name, m in self.named_modules() if isinstance(m, _DyReg3D)}

    def forward(self, clip: Tensor) -> Tensor:
        if clip.dim() != 5:
            raise ValueError(f"clip: expected [B, T, C, H, W], got shape {tuple(clip.shape)}")
        feats = self.backbone(clip.transpose(1, 2))  # [B, C', T', H', W']
        return self.fc(self.dropout(feats.mean((2, 3, 4))))


def build_video3d_model(backbone: str, num_classes: int, num_frames: int,
                        dyreg_at: Sequence[str] = (), dyreg: dict | DyRegConfig | None = None,
                        drop_rate: float = 0.5, input_size: int = 112,
                        in_chans: int = 3) -> Video3DModel:
    """A torchvision video ResNet (``r3d_18``, ``r2plus1d_18``, ``mc3_18``), random init,
    with DyReg blocks after the named blocks (e.g. ``["layer3"]``)."""
    import torchvision.models.video as tvv

    if backbone not in VIDEO_RESNETS:
        raise ValueError(f"backbone: expected one of {VIDEO_RESNETS}, got {backbone!r}")
    net = getattr(tvv, backbone)(weights=None)
    net.fc = nn.Identity()
    net.avgpool = nn.Identity()
    net.forward = _features_forward.__get__(net)
    shapes = feature_map_blocks(net, (1, in_chans, num_frames, input_size, input_size), dims=5)
    with torch.no_grad():
        net.eval()
        out = net(torch.zeros(1, in_chans, num_frames, input_size, input_size))
        net.train()
    cfg = dyreg if isinstance(dyreg, DyRegConfig) else DyRegConfig.from_dict(dyreg or {})
    for name in dyreg_at:
        if name not in shapes:
            raise ValueError(f"dyreg_at: {name!r} is not a block with a 5-D output; valid names: "
                             f"{sorted(shapes)}")
        c, _t, h, w = shapes[name]
        bcfg = DyRegConfig.from_dict({**cfg.to_dict(), "gnn": cfg.gnn,
                                      "spatial_size": cfg.spatial_size or (h, w)})
        block = net.get_submodule(name)
        block.add_module("dyreg_after", _DyReg3D(DyRegBlock(c, bcfg)))
        block.register_forward_hook(_hook)
    return Video3DModel(net, num_classes, num_frames, out.shape[1], drop_rate)


def _features_forward(self: nn.Module, x: Tensor) -> Tensor:
    x = self.stem(x)
    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    return self.layer4(x)

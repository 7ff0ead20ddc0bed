"""The paper's models as named presets."""

from __future__ import annotations

import copy
from typing import Any

from .factory import VideoModel, build_video_model

__all__ = ["PRESETS", "list_presets", "build_preset", "SYNCMNIST_PAPER_PARAMS_M"]

_SSV = dict(num_classes=174, num_frames=16, shift=True, in_chans=3, input_size=224,
            dyreg=dict(num_nodes=9, init="center", node_channels=256, iterations=3,
                       share_weights=True))
_SYNC = dict(backbone="resnet18", num_classes=56, num_frames=10, in_chans=1, input_size=64,
             remove_stages=["layer4"], dyreg_at=["layer2"],
             dyreg=dict(num_nodes=9, node_channels=64, share_weights=True, region_channels=32,
                        iterations=3))

PRESETS: dict[str, dict[str, Any]] = {
    "tsm_r50_dyreg": dict(_SSV, backbone="resnet50",
                          dyreg_at=["layer2.2", "layer3.4", "layer4.1"]),
    "tsm_r50_dyreg_r4": dict(_SSV, backbone="resnet50", dyreg_at=["layer3.4"]),
    "tsm_r50": dict(_SSV, backbone="resnet50", dyreg_at=[]),
    "tsm_r18_dyreg": dict(_SSV, backbone="resnet18",
                          dyreg_at=["layer2.1", "layer3.1", "layer4.1"],
                          dyreg=dict(_SSV["dyreg"], node_channels=128)),
    "syncmnist_r18_nograph": dict(_SYNC, dyreg_at=[]),
}
for _mode, _init in [("fixed", "grid"), ("static", "grid"), ("constant_time", "center"),
                     ("pos_only", "center"), ("dyreg", "center"), ("dyreg_lite", "center"),
                     ("semantic", "center")]:
    PRESETS[f"syncmnist_r18_{_mode}"] = dict(
        _SYNC, dyreg=dict(_SYNC["dyreg"], regions=_mode, init=_init))

SYNCMNIST_PAPER_PARAMS_M = {"nograph": 2.79, "fixed": 2.82, "semantic": 2.85,
                            "dyreg_lite": 2.83, "dyreg": 3.08}
"""Parameter counts (millions) of the MultiSyncMNIST models, paper Table 6."""


def list_presets() -> list[str]:
    return sorted(PRESETS)


def build_preset(name: str, **overrides: Any) -> VideoModel:
    """Build a preset; ``overrides`` replace its arguments (``dyreg`` dicts are merged)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}; available: {list_presets()}")
    kwargs = copy.deepcopy(PRESETS[name])
    if "dyreg" in overrides and isinstance(overrides["dyreg"], dict):
        kwargs["dyreg"] = {**kwargs.get("dyreg", {}), **overrides.pop("dyreg")}
    kwargs.update(overrides)
    return build_video_model(**kwargs)

"""The paper's models as named presets (Table 1-4: Something-Something; Table 5-6: MultiSyncMNIST).

Something-Something: TSM-ResNet50, 16 frames, 224 x 224, 174 classes, DyReg after
``layer2.2``, ``layer3.4`` and ``layer4.1`` (``r3-4-5``) or only ``layer3.4`` (``r4``).
The DyReg width (256-d nodes, 16-d region branch, one spatial and one temporal layer shared by
the K = 3 iterations) is chosen so three modules cost about what the paper reports: 1.6 G
multiply-adds at 16 x 224 x 224, 0.2 G of them for the region prediction.

MultiSyncMNIST: ResNet-18 with 3 stages (``layer4`` removed, 256 output channels), 1 input
channel, 64 x 64 frames, 10 frames, 56 classes, the graph after stage 2 (``layer2``: 128
channels, 8 x 8 map), N = 9, K = 3. 64-d nodes and a 32-d region branch put the parameter
counts within 3 % of Table 6 (see :func:`syncmnist_param_table`).

``syncmnist_r18_128_*``: the same models at the authors' geometry (their code: 128 x 128
input; the graph after ``layer2`` on a 16 x 16 map, node size ``128 // ch_div`` = 64), for data
made with ``python datasets/syncmnist.py --geometry authors``. The larger map adds 12,288
parameters to the position embedding of the graph variants; every count stays within 3 % of
Table 6 (``syncmnist_param_table(input_size=128)``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .base import VideoModel
from .factory import build_video_model

__all__ = ["PRESETS", "list_presets", "build_preset", "SYNCMNIST_PAPER_PARAMS_M",
           "SYNCMNIST_VARIANTS", "syncmnist_param_table"]

log = logging.getLogger(__name__)

_SSV: dict[str, Any] = dict(
    num_classes=174, num_frames=16, shift=True, in_chans=3, input_size=224,
    dyreg=dict(num_nodes=9, init="center", node_channels=256, region_channels=16, iterations=3,
               share_weights=True),
)
_SYNC: dict[str, Any] = dict(
    backbone="resnet18", num_classes=56, num_frames=10, in_chans=1, input_size=64,
    remove_stages=["layer4"], dyreg_at=["layer2"],
    dyreg=dict(num_nodes=9, node_channels=64, region_channels=32, iterations=3,
               share_weights=True),
)

#: The MultiSyncMNIST ablations (Tables 5 and 6): preset suffix -> (region mode, init).
SYNCMNIST_VARIANTS: dict[str, tuple[str, str] | None] = {
    "nograph": None,
    "fixed": ("fixed", "grid"),
    "static": ("static", "grid"),
    "constant_time": ("constant_time", "center"),
    "pos_only": ("pos_only", "center"),
    "dyreg": ("dyreg", "center"),
    "dyreg_lite": ("dyreg_lite", "center"),
    "semantic": ("semantic", "center"),
}

PRESETS: dict[str, dict[str, Any]] = {
    "tsm_r50": dict(_SSV, backbone="resnet50", dyreg_at=[]),
    "tsm_r50_dyreg": dict(_SSV, backbone="resnet50",
                          dyreg_at=["layer2.2", "layer3.4", "layer4.1"]),
    "tsm_r50_dyreg_r4": dict(_SSV, backbone="resnet50", dyreg_at=["layer3.4"]),
    # The authors' released model (their train_model.sh): DyReg inside the bottleneck, after
    # conv2 and before bn2 (128/256/512 channels; nodes 128/256/256 with a projection at
    # layer4), their module (flavor="authors"); their checkpoints load with
    # dyreg_pyg.compat.load_official.
    "tsm_r50_dyreg_authors": dict(
        _SSV, backbone="resnet50",
        dyreg_at=["layer2.2.conv2", "layer3.4.conv2", "layer4.1.conv2"],
        dyreg=dict(flavor="authors", num_nodes=9, init="center", iterations=3),
        dyreg_per_block={"layer4.1.conv2": dict(node_channels=256)},
        # their torchvision ResNet starts bn3 at 1; timm's default zero_init_last would zero
        # every residual branch, and with it the gradient of the DyReg modules inside them
        zero_init_last=False,
    ),
    "tsm_r18_dyreg": dict(_SSV, backbone="resnet18",
                          dyreg_at=["layer2.1", "layer3.1", "layer4.1"],
                          dyreg=dict(_SSV["dyreg"], node_channels=128)),
}
"""Preset name -> keyword arguments of :func:`~dyreg_pyg.models.build_video_model`."""
for _suffix, _mode in SYNCMNIST_VARIANTS.items():
    PRESETS[f"syncmnist_r18_{_suffix}"] = (
        dict(_SYNC, dyreg_at=[]) if _mode is None
        else dict(_SYNC, dyreg=dict(_SYNC["dyreg"], regions=_mode[0], init=_mode[1]))
    )

# A diagnostic beside the paper's ablations: the ground-truth boxes of the 5 digits as the
# regions (N = 5, node k = digit k in every frame); the model must be given them (see
# VideoModel.forward), so it only trains on data with boxes (MultiSyncMNIST).
PRESETS["syncmnist_r18_oracle"] = dict(
    _SYNC, dyreg=dict(_SYNC["dyreg"], regions="external", num_nodes=5))
# The authors' geometry: 128 x 128 frames, so the graph runs on layer2's 16 x 16 map.
for _suffix in [*SYNCMNIST_VARIANTS, "oracle"]:
    PRESETS[f"syncmnist_r18_128_{_suffix}"] = dict(PRESETS[f"syncmnist_r18_{_suffix}"],
                                                   input_size=128)

SYNCMNIST_PAPER_PARAMS_M: dict[str, float] = {
    "nograph": 2.79, "fixed": 2.82, "semantic": 2.85, "dyreg_lite": 2.83, "dyreg": 3.08,
}
"""Parameter counts (millions) of the MultiSyncMNIST models, paper Table 6
(``nograph`` is the table's plain "ResNet-18" row)."""


def list_presets() -> list[str]:
    """Names accepted by :func:`build_preset`, sorted."""
    return sorted(PRESETS)


def build_preset(name: str, **overrides: Any) -> VideoModel:
    """Build the preset ``name``; ``overrides`` replace its arguments of
    :func:`~dyreg_pyg.models.build_video_model` (a ``dyreg`` dict is merged into the
    preset's, so ``dyreg={"iterations": 1}`` changes only that field)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; available: {list_presets()}")
    kwargs = copy.deepcopy(PRESETS[name])
    if isinstance(overrides.get("dyreg"), dict):
        kwargs["dyreg"] = {**kwargs.get("dyreg", {}), **overrides.pop("dyreg")}
    kwargs.update(overrides)
    return build_video_model(**kwargs)


def syncmnist_param_table(input_size: int = 64) -> dict[str, tuple[float, float | None]]:
    """``{variant: (our parameters, paper's Table 6)}`` in millions for every MultiSyncMNIST
    preset (``None`` where the paper gives no count); also logged at INFO level.
    ``input_size``: 64 (``syncmnist_r18_*``) or 128 (``syncmnist_r18_128_*``)."""
    if input_size not in (64, 128):
        raise ValueError(f"input_size: expected 64 or 128, got {input_size}")
    prefix = "syncmnist_r18_" if input_size == 64 else "syncmnist_r18_128_"
    table: dict[str, tuple[float, float | None]] = {}
    for suffix in SYNCMNIST_VARIANTS:
        model = build_preset(prefix + suffix)
        ours = sum(p.numel() for p in model.parameters()) / 1e6
        table[suffix] = (ours, SYNCMNIST_PAPER_PARAMS_M.get(suffix))
        log.info("%s%s: %.3f M parameters (paper %s)", prefix, suffix, ours, table[suffix][1])
    return table

"""Video models: timm backbones, temporal shift, DyReg insertion by block name, presets."""

from .base import VideoModel, attach_dyreg, feature_map_blocks
from .factory import build_video_model
from .presets import (
    PRESETS,
    SYNCMNIST_PAPER_PARAMS_M,
    SYNCMNIST_VARIANTS,
    build_preset,
    list_presets,
    syncmnist_param_table,
)
from .tsm import TemporalShift, add_temporal_shift, temporal_shift
from .video3d import VIDEO_RESNETS, Video3DModel, build_video3d_model

__all__ = [
    "VideoModel", "build_video_model", "feature_map_blocks", "attach_dyreg", "PRESETS",
    "build_preset", "list_presets", "SYNCMNIST_PAPER_PARAMS_M", "SYNCMNIST_VARIANTS",
    "syncmnist_param_table", "TemporalShift", "add_temporal_shift", "temporal_shift",
    "VIDEO_RESNETS", "Video3DModel", "build_video3d_model",
]

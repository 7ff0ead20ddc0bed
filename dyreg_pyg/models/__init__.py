"""Video models: timm backbones, temporal shift, DyReg insertion by block name, presets."""

from .factory import VideoModel, build_video_model, feature_map_blocks
from .presets import PRESETS, SYNCMNIST_PAPER_PARAMS_M, build_preset, list_presets
from .tsm import TemporalShift, add_temporal_shift, temporal_shift
from .video3d import VIDEO_RESNETS, Video3DModel, build_video3d_model

__all__ = [
    "VideoModel", "build_video_model", "feature_map_blocks", "PRESETS", "build_preset",
    "list_presets", "SYNCMNIST_PAPER_PARAMS_M", "TemporalShift", "add_temporal_shift",
    "temporal_shift", "VIDEO_RESNETS", "Video3DModel", "build_video3d_model",
]

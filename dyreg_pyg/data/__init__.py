"""Data: MultiSyncMNIST / SyncMNIST generation, Something-Something converters, WebDataset
shards and the streaming clip loader."""

from . import stages
from .decode import CorruptSample, DecodeStats, decode_jpeg, decode_npy_frames, decode_video
from .loader import (
    MAX_EMPTY_PASSES,
    ClipDataset,
    ClipLoader,
    ClipLoaderConfig,
    EmptyDataError,
    SkipCounter,
    explain_skips,
    make_clip_loader,
)
from .memory import InMemoryClips, InMemoryLoader
from .shards import ShardWriter, brace_pattern, expand_shard_urls, load_manifest
from .something import (
    convert_something,
    flip_pairs_from_names,
    read_something_else_boxes,
    read_ssv1_labels,
    read_ssv1_split,
    read_ssv2_labels,
    read_ssv2_split,
    template_to_class_name,
)
from .syncmnist import (
    MULTISYNCMNIST_NUM_CLASSES,
    SYNCMNIST_NUM_CLASSES,
    SYNCMNIST_TASKS,
    SyncMNISTConfig,
    generate_video,
    load_digit_pool,
    syncmnist_class_names,
    syncmnist_label,
    syncmnist_num_classes,
    syncmnist_task_of,
    write_syncmnist_shards,
)
from .transforms import (
    TSM_SCALES,
    View,
    eval_indices,
    normalize_clip,
    train_indices,
)

__all__ = [
    "make_clip_loader", "ClipLoaderConfig", "ClipLoader", "ClipDataset", "SkipCounter",
    "EmptyDataError",
    "MAX_EMPTY_PASSES", "explain_skips", "InMemoryClips", "stages",
    "InMemoryLoader",
    "write_syncmnist_shards", "generate_video", "load_digit_pool", "SyncMNISTConfig",
    "SYNCMNIST_NUM_CLASSES", "MULTISYNCMNIST_NUM_CLASSES", "syncmnist_label",
    "syncmnist_class_names", "syncmnist_num_classes", "SYNCMNIST_TASKS",
    "syncmnist_task_of",
    "normalize_clip", "train_indices", "eval_indices", "View", "TSM_SCALES",
    "ShardWriter", "brace_pattern", "expand_shard_urls", "load_manifest",
    "convert_something", "flip_pairs_from_names", "read_something_else_boxes",
    "read_ssv1_labels", "read_ssv1_split", "read_ssv2_labels", "read_ssv2_split",
    "template_to_class_name",
    "CorruptSample", "DecodeStats", "decode_jpeg", "decode_npy_frames", "decode_video",
]

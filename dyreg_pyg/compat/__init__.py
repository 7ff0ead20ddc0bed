"""Weights from elsewhere: the authors' released checkpoints (key mapping and loading) and
state dicts of earlier versions of this library (:mod:`dyreg_pyg.compat.legacy`)."""

from .legacy import LEGACY_KEY_RULES, legacy_config, remap_legacy_keys
from .official import (
    convert_official,
    load_official,
    official_key,
    read_official_checkpoint,
    same_layout,
)

__all__ = ["load_official", "convert_official", "official_key", "read_official_checkpoint",
           "same_layout", "remap_legacy_keys", "LEGACY_KEY_RULES", "legacy_config"]

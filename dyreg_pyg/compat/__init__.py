"""The authors' released code as a flavour's weights: checkpoint key mapping."""

from .official import (
    convert_official,
    load_official,
    official_key,
    read_official_checkpoint,
    same_layout,
)

__all__ = ["load_official", "convert_official", "official_key", "read_official_checkpoint",
           "same_layout"]

"""Message-passing layers (Eq. 8), temporal updates (Eq. 9) and the layer registry."""

from .inputs import GraphInputs, InputPlan
from .registry import TESTED_LAYERS, available_layers, make_spatial_layer
from .rstg import RSTGConv
from .temporal import TEMPORAL_UPDATES, TemporalUpdate

__all__ = [
    "GraphInputs",
    "InputPlan",
    "RSTGConv",
    "TemporalUpdate",
    "TEMPORAL_UPDATES",
    "make_spatial_layer",
    "available_layers",
    "TESTED_LAYERS",
]

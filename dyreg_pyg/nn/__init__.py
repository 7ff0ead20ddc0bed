"""The model's parts, one room per step of the paper: region generators (``regions/``,
Eq. 1-6), kernels and node pooling (Eq. 5-7), position embeddings, message-passing layers
(``conv/``, Eq. 8), temporal updates (Eq. 9), the graph stacks (the K iterations),
re-mapping (Eq. 10), graph norms and the layer registry."""

from .conv import AuthorsRSTGConv, RSTGConv
from .registry import TESTED_LAYERS, available_layers, make_spatial_layer
from .temporal import TEMPORAL_UPDATES, TemporalUpdate

__all__ = [
    "RSTGConv",
    "AuthorsRSTGConv",
    "TemporalUpdate",
    "TEMPORAL_UPDATES",
    "make_spatial_layer",
    "available_layers",
    "TESTED_LAYERS",
]

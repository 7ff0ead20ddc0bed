"""dyreg_pyg: DyReg-GNN (Duta et al., NeurIPS 2021) on PyTorch Geometric."""

from ._pyg import torch_geometric  # noqa: F401  (first: PyG without its jit warning)
from .authors import AuthorsDyRegGNN  # the flavour "authors" (registered on import)
from .config import DyRegConfig
from .geometry import regions_to_boxes
from .graph import build_graph_batch, complete_edge_index
from .module import DyRegBlock, DyRegDetails, DyRegGNN, flavor_class, register_flavor
from .nn import RSTGConv, TemporalUpdate, make_spatial_layer
from .nn.kernels import pool_nodes, region_kernels
from .nn.regions import REGION_MODES, make_region_generator
from .nn.remap import remap_nodes

__version__ = "0.1.0"

# Video models import timm; they load on first access (``dyreg_pyg.build_preset``).
_MODEL_EXPORTS = ("VideoModel", "build_video_model", "build_preset", "list_presets", "PRESETS")


def __getattr__(name: str):
    if name in _MODEL_EXPORTS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DyRegGNN",
    "AuthorsDyRegGNN",
    "flavor_class",
    "register_flavor",
    "DyRegBlock",
    "DyRegConfig",
    "DyRegDetails",
    "RSTGConv",
    "TemporalUpdate",
    "make_spatial_layer",
    "build_graph_batch",
    "complete_edge_index",
    "region_kernels",
    "pool_nodes",
    "remap_nodes",
    "regions_to_boxes",
    "make_region_generator",
    "REGION_MODES",
    "VideoModel",
    "build_video_model",
    "build_preset",
    "list_presets",
    "PRESETS",
]

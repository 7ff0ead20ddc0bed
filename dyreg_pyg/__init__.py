"""dyreg_pyg: DyReg-GNN (Duta et al., NeurIPS 2021) on PyTorch Geometric."""

from .graph import build_graph_batch, complete_edge_index
from .kernels import pool_nodes, region_kernels, regions_to_boxes, remap_nodes
from .module import DyRegBlock, DyRegConfig, DyRegDetails, DyRegGNN
from .nn import RSTGConv, TemporalUpdate, make_spatial_layer
from .regions import REGION_MODES, make_region_generator

__version__ = "0.1.0"

__all__ = [
    "DyRegGNN",
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
]

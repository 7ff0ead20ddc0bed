"""Every class of ``torch_geometric.nn.conv`` through ``DyRegGNN(gnn=...)``: it trains (finite
gradients, some on the region generator; the geometry's gradient reaches the regions) or is
refused at construction with one line naming what is missing - and docs/RESULTS.md holds
exactly this table (``python -m dyreg_pyg.nn.layer_table --write docs/RESULTS.md``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch_geometric.nn.conv as conv
from torch_geometric.nn import GATConv, MessagePassing

from dyreg_pyg import DyRegGNN
from dyreg_pyg.geometry import GEOMETRY_COLUMNS
from dyreg_pyg.nn import make_spatial_layer
from dyreg_pyg.nn.inputs import plan_of
from dyreg_pyg.nn.layer_table import BEGIN, END, layer_table, markdown

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"
NEW = ("GINEConv", "NNConv", "PointNetConv", "PointTransformerConv", "GMMConv", "PDNConv",
       "CGConv", "GCN2Conv", "PointGNNConv", "GPSConv")


@pytest.fixture(scope="module")
def table():
    return {row.name: row for row in layer_table()}


def test_every_conv_class_trains_or_is_refused_in_one_line(table):
    classes = {n for n in conv.__all__ if getattr(conv, n) is not MessagePassing}
    assert set(table) == classes
    for row in table.values():
        if not row.trains:
            assert "\n" not in row.detail and row.detail.startswith(f"gnn: {row.name}"), row
    trained = {n for n, r in table.items() if r.trains}
    assert len(trained) >= 42, sorted(set(table) - trained)
    assert set(NEW) <= trained
    # the geometry reaches the layers that take it
    assert "edge_attr" in table["GINEConv"].detail and "pos" in table["PointNetConv"].detail
    assert "edge_weight" in table["GCNConv"].detail and "x_0" in table["GCN2Conv"].detail
    assert table["PPFConv"].detail.count("normal") == 1 and not table["PPFConv"].trains


def test_docs_hold_the_table_of_today(table):
    text = RESULTS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    documented = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert documented == markdown(list(table.values())), \
        "docs/RESULTS.md: run python -m dyreg_pyg.nn.layer_table --write docs/RESULTS.md"


def test_edge_dim_is_passed_and_a_callable_still_works():
    layer = make_spatial_layer("GATv2Conv", 8)
    assert layer.lin_edge.weight.shape[1] == len(GEOMETRY_COLUMNS)
    assert plan_of(layer).names == ("x", "edge_index", "edge_attr")
    own = make_spatial_layer(lambda c: GATConv(c, c), 8)  # no edge_dim: edge_attr unused
    assert own.lin_edge is None
    plain = make_spatial_layer("GATv2Conv", 8, geometry=False)
    assert plain.lin_edge is None and plan_of(plain).plain


def test_default_rstg_computes_no_geometry(monkeypatch):
    import dyreg_pyg.nn.inputs as inputs

    def boom(*args, **kwargs):
        raise AssertionError("geometry computed for a layer that does not take it")

    torch.manual_seed(0)
    m = DyRegGNN(4, 8, num_nodes=4, iterations=1)
    g = DyRegGNN(4, 8, num_nodes=4, iterations=1, gnn="GINEConv")
    monkeypatch.setattr(inputs, "edge_geometry", boom)
    monkeypatch.setattr(inputs, "region_centres", boom)
    m(torch.randn(1, 2, 4, 5, 5))  # would raise if the geometry were computed
    with pytest.raises(AssertionError, match="geometry computed"):
        g(torch.randn(1, 2, 4, 5, 5))


def test_geometry_off_refuses_layers_that_need_it():
    with pytest.raises(ValueError, match=r"gnn: PointNetConv's forward needs pos.*edge_geometry"):
        DyRegGNN(4, 8, gnn="PointNetConv", edge_geometry=False)

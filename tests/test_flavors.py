"""Issue 34: the flavour is a class (a registry by name), one config, one attention rule,
the documented key remap of older checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

from dyreg_pyg import AuthorsDyRegGNN, DyRegBlock, DyRegConfig, DyRegGNN, flavor_class
from dyreg_pyg.compat import remap_legacy_keys
from dyreg_pyg.config import FLAVORS
from dyreg_pyg.module import FLAVOR_CLASSES, register_flavor

KW = dict(num_nodes=4, region_channels=4, spatial_size=(5, 5), iterations=2)


def test_the_flavour_picks_the_class_and_both_are_dyreg_gnn():
    assert sorted(FLAVOR_CLASSES) == sorted(FLAVORS)
    paper, authors = DyRegGNN(8, **KW), DyRegGNN(8, flavor="authors", **KW)
    assert type(paper) is DyRegGNN and type(authors) is AuthorsDyRegGNN
    assert isinstance(authors, DyRegGNN) and authors.config.flavor == "authors"
    assert type(DyRegGNN(8, config=DyRegConfig(flavor="authors", **KW))) is AuthorsDyRegGNN
    assert type(AuthorsDyRegGNN(8, **KW)) is AuthorsDyRegGNN  # flavour from the class
    assert flavor_class("authors") is AuthorsDyRegGNN
    assert type(DyRegBlock(8, DyRegConfig(flavor="authors", **KW)).gnn) is AuthorsDyRegGNN
    assert type(copy.deepcopy(authors)) is AuthorsDyRegGNN
    with pytest.raises(ValueError, match="flavor: AuthorsDyRegGNN implements 'authors'"):
        AuthorsDyRegGNN(8, config=DyRegConfig(**KW))
    with pytest.raises(ValueError, match="flavor: expected one of"):
        flavor_class("theirs")
    with pytest.raises(ValueError, match="already registered"):
        register_flavor("paper")(AuthorsDyRegGNN)
    with pytest.raises(ValueError, match="either a DyRegConfig or its fields"):
        DyRegGNN(8, config=DyRegConfig(**KW), num_nodes=4)


def test_no_child_module_named_authors_and_keys_are_flat():
    block = DyRegBlock(8, DyRegConfig(flavor="authors", **KW))
    keys = list(block.state_dict())
    assert "gnn.regions.gain" in keys and not any(".authors." in k for k in keys)
    assert block.gamma is None and "norm.norm.weight" in keys


@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_rule_for_reporting_attention(flavor):
    """Our RSTG layers report one weight per frame edge in both flavours; a PyG layer
    (TransformerConv, which has ``lin_query``) reports none in both."""
    x = torch.randn(1, 2, 8, 5, 5)
    _, det = DyRegGNN(8, flavor=flavor, **KW)(x, return_details=True)
    assert det.attention is not None and det.attention.shape == (2 * 4 * 4,)
    _, det = DyRegGNN(8, flavor=flavor, gnn="TransformerConv", **KW)(x, return_details=True)
    assert det.attention is None


def test_config_replace_is_checked_again():
    cfg = DyRegConfig()
    assert cfg.replace(num_nodes=4).num_nodes == 4 and cfg.num_nodes == 9
    with pytest.raises(ValueError, match="unknown keys \\['nodes'\\]"):
        cfg.replace(nodes=4)
    with pytest.raises(ValueError, match="backend"):
        cfg.replace(backend="dense", gnn="GATConv")
    with pytest.raises(ValueError, match="norm: expected one of"):
        DyRegBlock(8, cfg, norm="group")
    assert DyRegConfig(spatial_size=7).spatial_size == (7, 7)


def test_a_registered_region_mode_is_accepted_by_the_config():
    """The config reads the region registry itself, not a snapshot of the built-in modes."""
    from dyreg_pyg.nn.regions import REGION_GENERATORS, FixedRegions, register_region_mode

    @register_region_mode("test_grid")
    def build(in_channels, num_nodes, init, init_size, channels, init_jitter):
        return FixedRegions(num_nodes, "grid", init_size)

    try:
        m = DyRegGNN(8, num_nodes=4, regions="test_grid", iterations=1)
        assert m.config.regions == "test_grid" and isinstance(m.region_generator, FixedRegions)
        assert m(torch.randn(1, 2, 8, 5, 5)).shape == (1, 2, 8, 5, 5)
    finally:
        REGION_GENERATORS.pop("test_grid")
    with pytest.raises(ValueError, match="regions: unknown mode 'test_grid'; expected one of"):
        DyRegConfig(regions="test_grid")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("self_loops", "no", "self_loops: expected True or False, got 'no'"),
    ("share_weights", 0, "share_weights: expected True or False, got 0"),
    ("position_embedding", "off", "position_embedding: expected True or False, got 'off'"),
    ("iterations", "3", "iterations: expected a positive integer, got '3'"),
    ("iterations", 0, "iterations: expected a positive integer, got 0"),
    ("gate_init", "x", "gate_init: expected a number, got 'x'"),
])
def test_config_refuses_wrong_types_in_one_line(field, value, match):
    """A string where a flag belongs would be truthy (self_loops="no" kept the loops)."""
    with pytest.raises(ValueError, match=match):
        DyRegConfig(**{field: value})


def test_legacy_keys_are_renamed():
    old = {"backbone.layer3.dyreg.gnn.authors.regions.gain": 1, "gnn.authors.spatial.0.x": 2,
           "authors.temporal_out.rnn.w": 3, "gnn.spatial.0.lin_key.bias": 4,
           "head.authors_count": 5}
    assert remap_legacy_keys(old) == {
        "backbone.layer3.dyreg.gnn.regions.gain": 1, "gnn.spatial.0.x": 2,
        "temporal_out.rnn.w": 3, "gnn.spatial.0.lin_key.bias": 4, "head.authors_count": 5}
    with pytest.raises(ValueError, match="both map to 'gnn.regions.gain'"):
        remap_legacy_keys({"gnn.authors.regions.gain": 1, "gnn.regions.gain": 2})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"init": "foo"}, r"init: expected one of \('center', 'grid'\), got 'foo'"),
    ({"init_size": 5.0}, r"init_size: expected None or a radius in \(0, 1\], got 5.0"),
    ({"init_jitter": -1}, r"init_jitter: expected >= 0 \(a number\), got -1"),
    ({"regions": "fixed", "init": "center"}, "init: regions='fixed' with init='center'"),
    ({"num_nodes": 5, "init": "grid"}, "num_nodes: init='grid' needs a perfect square .* 5"),
    ({"regions": "fixed", "init_jitter": 0.1}, "init_jitter: only for learned regions"),
    ({"flavor": "authors", "spatial_size": 56}, "spatial_size: flavor='authors' .* up to 50"),
    ({"backend": "dense", "live_graph": True}, "live_graph: expected False with backend='dense'"),
])
def test_config_refuses_bad_region_starts_at_construction(kwargs, match):
    """Issue 34: these were accepted by the config and refused only when the module was built
    (or, dense + live_graph, never: details.graph was silently None)."""
    with pytest.raises(ValueError, match=match):
        DyRegConfig(**kwargs)


def test_the_region_rules_are_the_same_for_config_and_generator():
    """make_region_generator applies the very rules of the config (check_region_init)."""
    from dyreg_pyg.nn.regions import make_region_generator

    with pytest.raises(ValueError, match="init_size: expected None or a radius"):
        make_region_generator("dyreg", 4, init_size=5.0)
    cfg = DyRegConfig(regions="static", init="center", init_jitter=0.1, init_size=0.3)
    assert (cfg.init, cfg.init_size, cfg.init_jitter) == ("center", 0.3, 0.1)

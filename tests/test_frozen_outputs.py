"""Checkpoints written before issue 34's restructuring load, and give the same outputs.

``tests/fixtures/*.pt`` were written by ``tests/dyreg_fixtures.py`` with the code of that time:
tiny :class:`~dyreg_pyg.DyRegBlock` s of both flavours (several region modes, backends and
layers), their state dicts and float64 outputs. Today's code must load every one and
reproduce the outputs to 1e-10, through the documented key remap of older checkpoints
(:func:`dyreg_pyg.compat.remap_legacy_keys`).
"""

from __future__ import annotations

import pytest
import torch
from dyreg_fixtures import CASES, FIXTURES, run_case

from dyreg_pyg import DyRegBlock, DyRegConfig
from dyreg_pyg.compat import legacy_config, remap_legacy_keys


def _load(name: str) -> tuple[DyRegBlock, dict]:
    ck = torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)
    cfg = DyRegConfig.from_dict(legacy_config(ck["config"]))
    block = DyRegBlock(ck["in_channels"], cfg).double().eval()
    block.load_state_dict(remap_legacy_keys(ck["model"]), strict=True)
    return block, ck


def test_every_case_has_a_fixture():
    assert sorted(p.stem for p in FIXTURES.glob("*.pt")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_checkpoint_reproduces_frozen_outputs(name):
    block, ck = _load(name)
    got = run_case(block, ck["x"])
    want = ck["outputs"]
    assert sorted(got) == sorted(want)
    assert want["block"].dtype == torch.float64
    # the fixture is not trivial: the block changes its input, the module is not zero
    assert (want["block"] - ck["x"]).abs().max() > 1e-3
    assert want["gnn"].abs().max() > 1e-3
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-10, msg=f"{name}: {key}")


def test_training_loader_applies_the_remap():
    """train's checkpoint loader renames the old ``gnn.authors.*`` keys itself."""
    from train.checkpoint import load_model_state

    ck = torch.load(FIXTURES / "authors.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("gnn.authors.") for k in ck["model"])  # written before issue 34
    block = DyRegBlock(ck["in_channels"], DyRegConfig.from_dict(ck["config"])).double().eval()
    load_model_state(block, ck["model"], "authors.pt")
    torch.testing.assert_close(run_case(block, ck["x"])["block"], ck["outputs"]["block"],
                               rtol=0, atol=1e-10)

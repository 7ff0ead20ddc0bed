"""The step-operation counter (dyreg_pyg.profile.count_step_ops) and benchmarks/bench_step_ops.py
on a tiny input (1 clip, 2 frames, 32 x 32; counts only, no timings)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from dyreg_pyg.models import build_preset
from dyreg_pyg.profile import count_step_ops

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_step_ops", ROOT / "benchmarks" / "bench_step_ops.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="module")
def counted():
    """(no-graph ops, DyReg ops, DyReg model) for one tiny training step each."""
    torch.manual_seed(0)
    clips = torch.randn(1, 2, 1, 32, 32)
    out = []
    for preset in ("syncmnist_r18_nograph", "syncmnist_r18_dyreg"):
        model = build_preset(preset, num_frames=2, input_size=32)
        model.eval()
        out.append(count_step_ops(model, clips))
    return out[0], out[1], model


def test_counts_are_positive_integers_and_views_are_apart(counted):
    bare, dyreg, model = counted
    for ops in (bare, dyreg):
        assert isinstance(ops.total, int) and ops.total == ops.num_views + ops.num_compute
        assert ops.num_views > 0 and ops.num_compute > 0
        assert all(isinstance(n, int) and n > 0 for n in (ops.views + ops.compute).values())
    # view operations land with the views, computing ones with the others
    assert "convolution" in bare.compute and "convolution" not in bare.views
    assert "select" in dyreg.views and "select" not in dyreg.compute
    assert "convolution_backward" in bare.compute  # the backward pass is counted
    assert model.training is False  # count_step_ops put it back in eval mode
    assert dyreg.total > bare.total and dyreg.num_compute > bare.num_compute
    top = dyreg.top(5)
    assert len(top) == 5 and [n for _, n in top] == sorted((n for _, n in top), reverse=True)
    assert dyreg.to_dict()["total"] == dyreg.total


def test_count_is_repeatable_and_rejects_frames_without_time():
    model = build_preset("syncmnist_r18_nograph", num_frames=2, input_size=32)
    clips = torch.randn(1, 2, 1, 32, 32)
    first, second = count_step_ops(model, clips), count_step_ops(model, clips)
    assert first.total == second.total
    with pytest.raises(ValueError, match=r"expected clips \[B, T, C, H, W\], got shape"):
        count_step_ops(model, clips[0])


def test_benchmark_table_and_json(tmp_path, capsys, monkeypatch):
    bench = _bench()
    rows = [bench.FAMILIES["syncmnist"][0], bench.FAMILIES["syncmnist"][2]]
    assert rows[1].preset == "syncmnist_r18_dyreg" and rows[1].flavor == "paper"
    results = bench.add_ratios([bench.count_row(r, 1, 2, 32) for r in rows])
    assert results[0]["ratio_total"] == 1.0
    assert results[1]["ratio_non_views"] == results[1]["non_views"] / results[0]["non_views"] > 1
    table = bench.format_table(results)
    assert "syncmnist_r18_dyreg" in table and "1x2x32x32" in table
    assert f"{results[1]['ratio_total']:.2f}" in table
    assert "kernels" not in table  # no CUDA count on CPU
    # the command line (one cheap row), JSON written; an unknown family is a CLI error
    monkeypatch.setitem(bench.FAMILIES, "syncmnist", rows[:1])
    with pytest.raises(SystemExit):
        bench.main(["--family", "nope"])
    out = tmp_path / "ops.json"
    assert bench.main(["--family", "syncmnist", "--batch", "1", "--frames", "2", "--size", "32",
                       "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "x non-view" in printed and "syncmnist_r18_nograph" in printed
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["rows"]] == ["syncmnist_r18_nograph/-"]
    assert data["rows"][0]["total"] == results[0]["total"]


def test_counts_by_source_add_up_and_name_modules_and_autograd_nodes(counted):
    """``by_source``: every counted operation lands in exactly one source; forward ones under
    the module that ran them, backward ones under their autograd node; the hooks are removed
    and the model's output is unchanged by counting."""
    model = counted[2]  # counted once already: the warm-up the benchmark also does
    clips = torch.randn(1, 2, 1, 32, 32)
    model.zero_grad(set_to_none=True)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    ops = count_step_ops(model, clips, by_source=True)
    assert sum(ops.sources.values()) == ops.total
    assert any(k.startswith("forward:backbone.layer2.dyreg_after.dyreg.gnn.temporal")
               for k in ops.sources)
    assert ops.sources["backward:_GRUSequenceBackward"] > 0
    assert ops.sources["backward:AccumulateGrad"] > 0
    cut = ops.by_source(2)
    assert sum(cut.values()) == ops.total and "forward:backbone.layer2" in cut
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
               for m in model.modules()) == hooks  # the counting hooks are removed
    model.zero_grad(set_to_none=True)  # the same gradient accumulation (into None) again
    plain = count_step_ops(model, clips)
    assert plain.total == ops.total and not plain.sources
    assert "by_source" in ops.to_dict() and "by_source" not in plain.to_dict()

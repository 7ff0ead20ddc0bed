"""``temporal=`` takes a name in any case or a callable ``channels -> module`` (as ``gnn=``),
with one-line errors naming what was expected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyreg_pyg import DyRegConfig, DyRegGNN
from dyreg_pyg.nn import TemporalUpdate

C = 4


def _x() -> torch.Tensor:
    return torch.randn(1, 3, C, 5, 5, generator=torch.Generator().manual_seed(1))


class TimeMix(nn.Module):
    """A causal temporal update: each frame plus a learnt map of the previous one."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(channels, channels)

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # [B, T, N, C]
        prev = torch.cat((torch.zeros_like(v[:, :1]), v[:, :-1]), 1)
        return v + self.lin(prev)


@pytest.mark.parametrize(("given", "kind"), [("GRU", "gru"), ("Lstm", "lstm"), ("NONE", "none"),
                                             (" gru ", "gru")])
def test_names_in_any_case(given, kind):
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, num_nodes=4, iterations=1, temporal=given)
    assert m.config.temporal == kind and m.temporal[0].kind == kind
    torch.manual_seed(0)
    ref = DyRegGNN(C, 8, num_nodes=4, iterations=1, temporal=kind)
    torch.testing.assert_close(m(_x()), ref(_x()), rtol=0, atol=0)


def test_a_callable_builds_the_update_and_trains():
    torch.manual_seed(0)
    m = DyRegGNN(C, 8, num_nodes=4, iterations=2, temporal=TimeMix)
    assert all(isinstance(t.module, TimeMix) and t.kind == "custom" for t in m.temporal)
    m(_x()).square().sum().backward()
    assert all(t.module.lin.weight.grad.abs().sum() > 0 for t in m.temporal)
    assert "TimeMix" in m.config.to_dict()["temporal"]
    upd = TemporalUpdate(8, TimeMix)
    v = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(upd(v), upd.module(v))


class Widen(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(channels, channels + 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.lin(v)


class Fails(nn.Module):
    def forward(self, v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no time axis here\nsecond line")


@pytest.mark.parametrize(("temporal", "match"), [
    ("transformer", r"temporal: unknown update 'transformer'; expected one of \('gru', 'lstm', "
                    r"'none'\) \(any case\) or a callable"),
    (3, "temporal: expected a name of .* or a callable .* got int"),
    (lambda c: "gru", "temporal: the callable must return an nn.Module, got str"),
    (Widen, r"temporal: Widen returned \(1, 2, 3, 9\) for nodes of shape \(1, 2, 3, 8\); "
            r"expected the same shape"),
    (lambda c: Fails(), "temporal: Fails cannot run on nodes of shape .*RuntimeError: no time"),
])
def test_bad_temporal_is_one_clear_line(temporal, match):
    with pytest.raises(ValueError, match=match) as err:
        DyRegGNN(C, 8, temporal=temporal)
    assert "\n" not in str(err.value)


def test_config_keeps_the_name_in_lower_case_and_authors_want_a_recurrent_one():
    assert DyRegConfig(temporal="LSTM").temporal == "lstm"
    assert DyRegConfig(flavor="authors", temporal="Gru").temporal == "gru"
    with pytest.raises(ValueError, match="temporal: flavor='authors' runs a recurrent network"):
        DyRegConfig(flavor="authors", temporal=TimeMix)


@pytest.mark.parametrize(("spec", "tail"), [
    (3, "or a callable.* got int"),
    (lambda c: "gru", "the callable must return an nn.Module, got str"),
])
def test_gnn_and_temporal_refuse_the_same_mistakes_alike(spec, tail):
    for field in ("gnn", "temporal"):
        with pytest.raises(ValueError, match=f"^{field}: .*{tail}$"):
            DyRegGNN(C, 8, **{field: spec})


class NormedTime(nn.Module):
    """A temporal module with a BatchNorm: its probe at construction must not move the stats."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # [B, T, N, C]
        return self.bn(v.reshape(-1, v.shape[-1]) + 1.0).view_as(v)


def test_the_construction_probe_leaves_batchnorm_statistics_and_mode_alone():
    """The shape probe ran in training mode: a BatchNorm's running mean moved toward the
    probe's input (1.0 here) before any data was seen."""
    update = TemporalUpdate(C, NormedTime)
    bn = update.module.bn
    assert torch.equal(bn.running_mean, torch.zeros(C))
    assert int(bn.num_batches_tracked) == 0
    assert update.module.training and bn.training

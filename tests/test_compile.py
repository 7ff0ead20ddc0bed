"""Issue 37: a DyReg model compiles into one graph (``torch.compile(fullgraph=True)``), with
the recurrences as :class:`~dyreg_pyg.nn.temporal.SequenceRNN` (Dynamo refuses ``nn.GRU``),
and what runs under compile is the function that runs in eager mode."""

import pytest
import torch
import torch._dynamo
from torch import nn

from dyreg_pyg import DyRegBlock
from dyreg_pyg.models import build_video_model
from dyreg_pyg.nn.temporal import SequenceRNN, _rnn_unrolled, gru_over_time

TINY = dict(num_nodes=4, node_channels=8, region_channels=8, iterations=2,
            spatial_size=(6, 6))


def _breaks(model: nn.Module, x: torch.Tensor) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    ex = torch._dynamo.explain(model)(x)
    return ex.graph_count, [r.reason.splitlines()[0] for r in ex.break_reasons]


@pytest.mark.parametrize("flavor", ["paper", "authors"])
def test_dyreg_block_traces_into_one_graph(flavor):
    torch.manual_seed(0)
    block = DyRegBlock(8, dict(TINY, flavor=flavor)).train()
    graphs, reasons = _breaks(block, torch.randn(2, 3, 8, 6, 6))
    assert (graphs, reasons) == (1, [])


def test_model_with_a_dyreg_stage_traces_into_one_graph():
    torch.manual_seed(0)
    model = build_video_model("resnet18", 3, 2, dyreg_at=["layer2"], input_size=32,
                              dyreg=dict(num_nodes=4, iterations=1)).train()
    graphs, reasons = _breaks(model, torch.randn(2, 2, 3, 32, 32))
    assert (graphs, reasons) == (1, [])


@pytest.mark.parametrize("kind,cls", [("gru", nn.GRU), ("lstm", nn.LSTM)])
def test_sequence_rnn_is_nn_rnn(kind, cls):
    """Same state dict, same seeded draws, same outputs as nn.GRU / nn.LSTM; the unrolled
    steps (what compile traces) and gru_over_time compute the same."""
    torch.manual_seed(0)
    ref = cls(5, 7, batch_first=True).double()
    torch.manual_seed(0)
    rnn = SequenceRNN(5, 7, kind).double()
    assert list(rnn.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(rnn.state_dict()[name], value)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)  # [B, T, S, C]
    seq = x.transpose(1, 2).reshape(6, 4, 5)
    want = ref(seq)[0].view(2, 3, 4, 7).transpose(1, 2)
    torch.testing.assert_close(rnn(seq)[0].view(2, 3, 4, 7).transpose(1, 2), want,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(_rnn_unrolled(rnn, kind, x), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(gru_over_time(rnn, x), want, rtol=0, atol=1e-12)


def test_oracle_regions_trace_into_one_graph():
    """The finiteness check of external regions reads values back: eager mode only."""
    torch.manual_seed(0)
    block = DyRegBlock(8, dict(num_nodes=4, regions="external", iterations=1))
    regions = torch.rand(2, 3, 4, 4) * 0.5 + 0.25
    torch._dynamo.reset()
    ex = torch._dynamo.explain(block)(torch.randn(2, 3, 8, 6, 6), regions)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0)
    with pytest.raises(ValueError, match="finite"):
        block(torch.randn(2, 3, 8, 6, 6), regions.masked_fill(regions > 0.7, float("nan")))

"""Temporal node updates (Eq. 9): a recurrent network over time for every (video, node)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["TemporalUpdate", "TEMPORAL_UPDATES"]

TEMPORAL_UPDATES = ("gru", "lstm", "none")


class TemporalUpdate(nn.Module):
    r"""Updates each node across time with a recurrent cell shared by all nodes (Eq. 9).

    .. math::
        \hat{\mathbf{v}}_{i,t+1} = \mathrm{GRU}(\hat{\mathbf{v}}_{i,t}, \mathbf{v}_{i,t})

    The recurrent state starts at zero for every clip; its output at every step is the
    updated node feature.

    Args:
        channels: node feature size ``C``.
        kind: ``"gru"`` (paper), ``"lstm"``, or ``"none"`` (identity, no temporal update).

    Shapes:
        - **input:** ``[B, T, N, C]``
        - **output:** ``[B, T, N, C]``
    """

    def __init__(self, channels: int, kind: str = "gru") -> None:
        super().__init__()
        if kind not in TEMPORAL_UPDATES:
            raise ValueError(f"temporal: expected one of {TEMPORAL_UPDATES}, got {kind!r}")
        self.kind = kind
        self.channels = channels
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}.get(kind)
        self.rnn = rnn(channels, channels, batch_first=True) if rnn is not None else None

    def reset_parameters(self) -> None:
        if self.rnn is not None:
            self.rnn.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.rnn is None:
            return x
        b, t, n, c = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b * n, t, c)
        out, _ = self.rnn(seq)  # Eq. 9
        return out.reshape(b, n, t, c).permute(0, 2, 1, 3)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, channels={self.channels}"

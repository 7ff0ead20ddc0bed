"""The authors' graph step (their ``ops/rstg.py``) as a PyG ``MessagePassing`` layer.

The released DyReg-GNN code (github bit-ml/DyReg-GNN) computes a different Eq. 8 than the
paper's text: LayerNorms on the messages and on the updated nodes, a one-layer message on
``v_i + v_j``, biased query/key projections without ``1/sqrt(d)``, a bias and a ReLU on the
aggregate and a residual update. :class:`AuthorsRSTGConv` computes exactly that, on any graph;
on the complete frame graphs of :class:`~dyreg_pyg.DyRegGNN` it equals their code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, softmax

from ..norm import GraphLayerNorm

__all__ = ["AuthorsRSTGConv", "edge_dot"]


class _EdgeDot(torch.autograd.Function):
    """``(q[dst] * k[src]).sum(-1)`` saving only ``q`` and ``k`` (not the per-edge copies)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        ctx.save_for_backward(q, k, src, dst)
        return (q.index_select(0, dst) * k.index_select(0, src)).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, src, dst = ctx.saved_tensors
        gq = gk = None
        g = grad.unsqueeze(-1)
        if ctx.needs_input_grad[0]:
            gq = torch.zeros_like(q).index_add_(0, dst, g * k.index_select(0, src))
        if ctx.needs_input_grad[1]:
            gk = torch.zeros_like(k).index_add_(0, src, g * q.index_select(0, dst))
        return gq, gk, None, None


def edge_dot(q: Tensor, k: Tensor, edge_index: Tensor) -> Tensor:
    """Per-edge dot products ``<q_i, k_j>`` ``[E]`` (``edge_index`` row 0 sender ``j``, row 1
    receiver ``i``); autograd keeps ``q`` and ``k``, not two ``[E, C]`` gathers."""
    return _EdgeDot.apply(q, k, edge_index[0], edge_index[1])


class AuthorsRSTGConv(MessagePassing):
    r"""The spatial step of the authors' released RSTG (Eq. 8 as their code computes it).

    .. math::
        \mathbf{m}_{ij} &= \mathrm{LN}_{msg}\big(\mathrm{ReLU}(\mathbf{W}_m
            (\mathbf{v}_i + \mathbf{v}_j) + \mathbf{b}_m)\big) \\
        a_{ij} &= \operatorname{softmax}_{j \in \mathcal{N}(i)}
            \big((\mathbf{W}_q \mathbf{v}_i + \mathbf{b}_q)^\top
            (\mathbf{W}_k \mathbf{v}_j + \mathbf{b}_k)\big) \\
        \mathbf{v}'_i &= \mathrm{LN}_{upd}\Big(\mathbf{v}_i + \mathrm{ReLU}\big(
            \textstyle\sum_{j} a_{ij}\, \mathbf{m}_{ij} + \mathbf{b}_a\big)\Big)

    :math:`\mathrm{LN}_{msg}` normalises all messages of a graph together (their
    ``LayerNorm((N, N, C))``), :math:`\mathrm{LN}_{upd}` all nodes of a graph (``(N, C)``),
    each with a per-channel scale and bias (:class:`GraphLayerNorm`).

    Departs from the paper's text (Eq. 8: ``MLP([v_j; v_i])`` weighted by a scaled dot-product
    attention): one layer on the sum ``v_i + v_j``, LayerNorms on messages and output,
    biased q/k without ``1/sqrt(d)``, a bias + ReLU on the aggregate and a residual update.
    Matches the authors' ``RSTG`` with ``send_layers=1``, ``combine_by_sum=True``,
    ``aggregation_type="dot"``, ``update_layers=0`` (their ``train_model.sh``).

    Args:
        channels (int): node size ``C`` (input and output).
        eps (float, optional): LayerNorm epsilon (default: ``1e-5``, theirs).
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)`, edge indices
          :math:`(2, |\mathcal{E}|)` (row 0 sender :math:`j`, row 1 receiver :math:`i`),
          optional ``batch`` :math:`(|\mathcal{V}|)` (graph of each node; the norms run per
          graph; ``None``: one graph)
        - **output:** node features :math:`(|\mathcal{V}|, C)`, or with
          ``return_attention_weights=True`` also ``(edge_index, attention [E])``
    """

    reports_edge_attention = True
    """Reports one attention weight per edge (:func:`~dyreg_pyg.nn.stack.call_space_layer`)."""
    norms_per_graph = True
    """Takes ``(x, edge_index, batch, num_graphs)``: its LayerNorms run per frame graph."""

    def __init__(self, channels: int, eps: float = 1e-5, **kwargs) -> None:
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        self.in_channels = self.out_channels = channels
        self.lin_message = nn.Linear(channels, channels)  # their send_mlp.0
        self.lin_query = nn.Linear(channels, channels)  # att_q
        self.lin_key = nn.Linear(channels, channels)  # att_k
        self.att_bias = nn.Parameter(torch.empty(channels))
        self.message_norm = GraphLayerNorm(channels, eps)
        self.update_norm = GraphLayerNorm(channels, eps)
        self._alpha: Tensor | None = None
        self._sums: tuple[Tensor, Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_message, self.lin_query, self.lin_key):
            lin.reset_parameters()  # PyTorch's default init, as theirs
        nn.init.zeros_(self.att_bias)
        self.message_norm.reset_parameters()
        self.update_norm.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run the authors' Eq. 8; see the class docstring for shapes."""
        if x.dim() != 2 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x: expected node features [num_nodes, {self.in_channels}], got shape "
                f"{tuple(x.shape)}"
            )
        if batch is None:
            batch = x.new_zeros(x.shape[0], dtype=torch.long)
            num_graphs = 1
        elif num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        # W_m (v_i + v_j) + b_m = W_m v_i + W_m v_j + b_m: computed per node, summed per edge.
        h = F.linear(x, self.lin_message.weight)
        logits = edge_dot(self.lin_query(x), self.lin_key(x), edge_index)  # no 1/sqrt(d)
        agg = self.propagate(edge_index, h=h, logits=logits, batch=batch, num_graphs=num_graphs,
                             size=None)
        alpha, (s1, s2) = self._alpha, self._sums
        self._alpha = self._sums = None
        # The message LayerNorm folded into the aggregate (exact): with the graph's mean mu
        # and 1/std r, sum_j a_ij (r (m_ij - mu) w + b) = r w (sum_j a_ij m_ij - mu A_i) + A_i b,
        # A_i = sum_j a_ij (1, or 0 for a node that receives nothing): the normalised
        # messages are never formed (nor saved for backward).
        count = scatter(torch.ones_like(alpha, dtype=s1.dtype), batch[edge_index[1]], 0,
                        dim_size=num_graphs, reduce="sum").clamp_min(1) * self.in_channels
        mean = s1 / count
        var = (s2 / count - mean * mean).clamp_min(0)
        rstd = torch.rsqrt(var + self.message_norm.eps)
        a_sum = scatter(alpha, edge_index[1], 0, dim_size=x.shape[0], reduce="sum").unsqueeze(-1)
        r = rstd.to(agg.dtype)[batch].unsqueeze(-1)
        mu = mean.to(agg.dtype)[batch].unsqueeze(-1)
        out = r * (agg - mu * a_sum) * self.message_norm.weight + a_sum * self.message_norm.bias
        out = F.relu(out + self.att_bias)  # aggregate + bias, ReLU
        out = self.update_norm(x + out, batch, num_graphs)  # residual update, LN over (N, C)
        if return_attention_weights:
            return out, (edge_index, alpha)
        return out

    def message(self, h_i: Tensor, h_j: Tensor, logits: Tensor, batch_i: Tensor,
                num_graphs: int, index: Tensor, ptr: Tensor | None, size_i: int | None
                ) -> Tensor:
        m = F.relu(h_i + h_j + self.lin_message.bias)  # one layer on v_i + v_j
        # Sums for the LayerNorm over all messages of each graph (float64 across edges).
        s1 = scatter(m.sum(-1).double(), batch_i, 0, dim_size=num_graphs, reduce="sum")
        s2 = scatter((m * m).sum(-1).double(), batch_i, 0, dim_size=num_graphs, reduce="sum")
        self._sums = (s1, s2)
        alpha = softmax(logits, index, ptr, size_i)  # a(v_j, v_i), Eq. 8 as theirs
        self._alpha = alpha
        return alpha.unsqueeze(-1) * m

    def forward_dense(self, x: Tensor, self_loops: bool = True) -> Tensor:
        """The same step on complete graphs, as batched tensors (no gather/scatter).

        Args:
            x: ``[G, N, C]`` (``G`` graphs of ``N`` nodes).
            self_loops: include the ``i -> i`` messages (their code does).

        Returns:
            ``[G, N, C]``, equal to :meth:`forward` on :func:`frame_edge_index` graphs.
        """
        g, n, c = x.shape
        h = F.linear(x, self.lin_message.weight)
        m = F.relu(h.unsqueeze(2) + h.unsqueeze(1) + self.lin_message.bias)  # [G, i, j, C]
        logits = self.lin_query(x) @ self.lin_key(x).transpose(1, 2)  # [G, i, j]
        if self_loops:  # the message LayerNorm folded into the aggregate, as in forward
            s1 = m.sum((1, 2, 3), dtype=torch.float64)
            s2 = (m * m).sum((1, 2, 3), dtype=torch.float64)
            count = n * n * c
            mean = s1 / count
            rstd = torch.rsqrt((s2 / count - mean * mean).clamp_min(0) + self.message_norm.eps)
            a = torch.softmax(logits, -1)
            agg = torch.matmul(a.unsqueeze(-2), m).squeeze(-2)  # sum_j a_ij m_ij  [G, i, C]
            r = rstd.to(agg.dtype).view(g, 1, 1)
            mu = mean.to(agg.dtype).view(g, 1, 1)
            out = r * (agg - mu) * self.message_norm.weight + self.message_norm.bias
            out = F.relu(out + self.att_bias)
            return self.update_norm.forward_dense(x + out, 2)
        mask = None
        if not self_loops:
            mask = ~torch.eye(n, dtype=torch.bool, device=x.device)
            logits = logits.masked_fill(~mask, float("-inf"))
        m = self.message_norm.forward_dense(m, 3, mask)
        a = torch.softmax(logits, -1)
        out = F.relu((a.unsqueeze(-1) * m).sum(2) + self.att_bias)
        return self.update_norm.forward_dense(x + out, 2)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels})"

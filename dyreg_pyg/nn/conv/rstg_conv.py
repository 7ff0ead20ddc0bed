"""RSTGConv: the attention-weighted message passing of Eq. 8 as a PyG ``MessagePassing`` layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.utils import softmax

__all__ = ["RSTGConv"]


class RSTGConv(MessagePassing):
    r"""The spatial message passing of DyReg-GNN / RSTG (Eq. 8 of the paper).

    .. math::
        \mathbf{v}'_i = \sum_{j \in \mathcal{N}(i)} a_{ij}\,
        \mathrm{MLP}\big([\mathbf{v}_j ; \mathbf{v}_i]\big),
        \qquad
        a_{ij} = \frac{\exp\big(\langle \mathbf{W}_q \mathbf{v}_i,
        \mathbf{W}_k \mathbf{v}_j \rangle / \sqrt{d}\big)}
        {\sum_{k \in \mathcal{N}(i)} \exp\big(\langle \mathbf{W}_q \mathbf{v}_i,
        \mathbf{W}_k \mathbf{v}_k \rangle / \sqrt{d}\big)}

    with the two-layer message network
    :math:`\mathrm{MLP}([\mathbf{v}_j;\mathbf{v}_i]) = \mathbf{W}_2\,
    \sigma(\mathbf{W}_s \mathbf{v}_j + \mathbf{W}_t \mathbf{v}_i + \mathbf{b}_1) + \mathbf{b}_2`
    (:math:`[\mathbf{W}_s\ \mathbf{W}_t]` is the first layer applied to the concatenation).
    The softmax runs over the senders :math:`j` of each receiver :math:`i`
    (:func:`torch_geometric.utils.softmax`), so any graph works, not only complete ones.

    Two exact rewrites keep the per-edge work small: the first layer is computed once per node
    and gathered per edge, and since :math:`\sum_j a_{ij} = 1`, the second layer is applied
    once per node after aggregation (receivers without incoming edges get :math:`\mathbf{0}`).

    Args:
        in_channels (int): size of each input node feature.
        out_channels (int, optional): size of each output node feature
            (default: ``in_channels``).
        attention_channels (int, optional): size :math:`d` of the query/key projections
            (default: ``out_channels``).
        bias (bool, optional): learn :math:`\mathbf{b}_1, \mathbf{b}_2` (default: ``True``).
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`,
          edge indices :math:`(2, |\mathcal{E}|)` (row 0 sender :math:`j`, row 1 receiver
          :math:`i`)
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})` or
          :math:`((|\mathcal{V}|, F_{out}), ((2, |\mathcal{E}|), (|\mathcal{E}|)))` if
          ``return_attention_weights=True``
    """

    reports_edge_attention = True
    """Reports one attention weight per edge (:func:`~dyreg_pyg.nn.stack.call_space_layer`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        attention_channels: int | None = None,
        bias: bool = True,
        **kwargs,
    ) -> None:
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        out_channels = out_channels or in_channels
        attention_channels = attention_channels or out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.attention_channels = attention_channels
        self.lin_query = Linear(in_channels, attention_channels, bias=False,
                                weight_initializer="glorot")
        self.lin_key = Linear(in_channels, attention_channels, bias=False,
                              weight_initializer="glorot")
        self.lin_src = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        self.lin_dst = Linear(in_channels, out_channels, bias=bias, weight_initializer="glorot")
        self.lin_out = Linear(out_channels, out_channels, bias=False, weight_initializer="glorot")
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_query, self.lin_key, self.lin_src, self.lin_dst, self.lin_out):
            lin.reset_parameters()
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def _projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Query, key, source and destination projections of ``x`` as one matrix product
        (fewer operations, forward and backward, than four ``Linear`` calls)."""
        lins = (self.lin_query, self.lin_key, self.lin_src, self.lin_dst)
        y = F.linear(x, torch.cat([lin.weight for lin in lins]))
        q, k, hs, hd = y.split([lin.weight.shape[0] for lin in lins], -1)
        if self.lin_dst.bias is not None:
            hd = hd + self.lin_dst.bias
        return q, k, hs, hd

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run Eq. 8; see the class docstring for shapes."""
        if x.dim() != 2 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x: expected node features [num_nodes, {self.in_channels}], got shape "
                f"{tuple(x.shape)}"
            )
        q, k, hs, hd = self._projections(x)
        out = self.propagate(edge_index, q=q, k=k, hs=hs, hd=hd, size=None)
        alpha = self._alpha
        self._alpha = None
        out = self.lin_out(out)
        if self.bias is not None:
            has_in = out.new_zeros(x.shape[0]).index_fill_(0, edge_index[1], 1.0)
            out = torch.addcmul(out, has_in.unsqueeze(-1), self.bias)
        if return_attention_weights:
            return out, (edge_index, alpha)
        return out

    def message(
        self,
        q_i: Tensor,
        k_j: Tensor,
        hs_j: Tensor,
        hd_i: Tensor,
        index: Tensor,
        ptr: Tensor | None,
        size_i: int | None,
    ) -> Tensor:
        logits = (q_i * k_j).sum(-1) / math.sqrt(self.attention_channels)
        alpha = softmax(logits, index, ptr, size_i)  # a(v_j, v_i), Eq. 8
        self._alpha = alpha
        return alpha.unsqueeze(-1) * F.relu(hs_j + hd_i)

    def forward_dense(self, x: Tensor, self_loops: bool = True) -> Tensor:
        """Eq. 8 on complete graphs, as batched matmuls (no gather/scatter).

        Same parameters and result as :meth:`forward` on
        :func:`~dyreg_pyg.graph.complete_edge_index` graphs with or without self-loops.

        Args:
            x: ``[G, N, F_in]`` (``G`` graphs of ``N`` nodes).
            self_loops: whether node ``i`` also receives its own message (``j = i``).

        Returns:
            ``[G, N, F_out]``.
        """
        q, k, hs, hd = self._projections(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(self.attention_channels)
        n = x.shape[-2]
        if not self_loops:
            if n == 1:  # no edges at all: every node receives nothing, as in `forward`
                return x.new_zeros(*x.shape[:-1], self.out_channels)
            eye = torch.eye(n, dtype=torch.bool, device=x.device)
            logits = logits.masked_fill(eye, float("-inf"))
        a = torch.softmax(logits, -1)
        h = F.relu(hs.unsqueeze(1) + hd.unsqueeze(2))  # [G, i, j, F]
        out = self.lin_out((a.unsqueeze(-1) * h).sum(2))
        if self.bias is not None:
            out = out + self.bias
        return out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"attention_channels={self.attention_channels})"
        )

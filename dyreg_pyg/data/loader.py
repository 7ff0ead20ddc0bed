"""Streaming clip loader over WebDataset shards.

Each DataLoader worker runs a ``wds.DataPipeline`` of stock webdataset stages and the stages
of :mod:`dyreg_pyg.data.stages`::

    (train "resample") passes without end, each wds.SimpleShardList in a fresh seeded order
    (eval, train "split") wds.SimpleShardList -> split_by_rank -> wds.split_by_worker
               -> tarfile_samples_counted -> (eval, few shards) split_samples
               -> (train) wds.shuffle, one pass at a time -> decode_clips -> batch_clips

Samples that cannot be used (corrupt JPEG/video/array, missing or unknown label, bad JSON,
unreadable shard) are skipped, logged with their key and counted; the counts travel with the
batches to the main process, where :class:`ClipLoader` accumulates them in a
:class:`SkipCounter` and logs a summary at the end of every epoch.

The tar stage reads each shard stream to its end - every archive of a stream of concatenated
archives (``pipe:cat a.tar b.tar``) - and then a ``pipe:`` command's exit status: a shard that
cannot be opened, is not a tar, ends early (a read error or a missing end marker: a truncated
file) or comes from a command that exits with a non-zero status is a ``shard_error`` named by
its URL; where the shards' manifest lists a shard's sample count, a
shard that yields fewer samples is reported with the shortfall. Only such data errors are
caught; anything else (``TimeoutError``, ``KeyboardInterrupt``, a bug) propagates. A training
stream that yields no usable sample in :data:`MAX_EMPTY_PASSES` passes over its shards raises
:class:`EmptyDataError` instead of waiting forever.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .remote import DEFAULT_READ_TIMEOUT, is_http, open_shard
from .shards import expand_shard_urls, load_manifest
from .stages import (
    MAX_EMPTY_PASSES,
    ClipSpec,
    EmptyDataError,
    EmptyPasses,
    EpochLosses,
    SkipCounter,
    batch_clips,
    collate_clips,
    decode_clips,
    explain_skips,
    make_clip,
    shard_passes,
    split_by_rank,
    split_samples,
    tarfile_samples_counted,
)
from .transforms import TSM_SCALES

log = logging.getLogger(__name__)

__all__ = ["SkipCounter", "EpochLosses", "ClipDataset", "ClipLoader", "make_clip_loader",
           "ClipLoaderConfig", "collate_clips", "DATASETS", "EmptyDataError", "MAX_EMPTY_PASSES",
           "explain_skips"]

#: Known ``dataset`` values and their defaults.
DATASETS: dict[str, dict[str, Any]] = {
    "syncmnist": {"flip": False, "resize_size": None},
    "something": {"flip": True, "resize_size": 256},
    "generic": {"flip": False, "resize_size": None},
}
_TRAIN_SPLITS = ("train",)
_EVAL_SPLITS = ("val", "validation", "test", "eval")

@dataclass
class _Params:
    urls: list[str]
    train: bool
    test: bool
    num_frames: int
    batch_size: int
    crop_size: int | None
    eval_crop_size: int | None
    resize_size: int | None
    num_clips: int
    num_crops: int
    flip: bool
    flip_pairs: dict[int, int]
    scales: tuple[float, ...]
    num_classes: int | None
    shuffle_buffer: int
    seed: int
    rank: int
    world_size: int
    partial: bool
    channels: int | None
    jpeg_draft: bool
    shard_counts: dict[str, int] = field(default_factory=dict)  # shard file name -> samples
    read_timeout: float = DEFAULT_READ_TIMEOUT
    train_shards: str = "resample"


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _open_shard(url: str, timeout: float) -> Any:
    """The loader's shard opener: :func:`~dyreg_pyg.data.remote.open_shard`."""
    return open_shard(url, timeout)


class ClipDataset(IterableDataset):
    """The per-worker pipeline; yields collated batches (see :func:`make_clip_loader`).

    A ``wds.DataPipeline`` of stock webdataset stages (``SimpleShardList``,
    ``split_by_worker``, ``shuffle``) and those of :mod:`dyreg_pyg.data.stages` (the tar
    stage that counts losses, the node split with explicit ranks, clip decoding, batching).
    Each yielded dict also carries ``"skipped"``: the ``(key, reason, detail[, n])`` records
    of the samples skipped since the previous batch; a final dict without ``"video"``
    carries those skipped after the last batch.
    """

    def __init__(self, params: _Params) -> None:
        super().__init__()
        self.p = params
        self.epoch = 0

    def spec(self) -> ClipSpec:
        """What :func:`~dyreg_pyg.data.stages.make_clip` needs of the parameters."""
        return ClipSpec(**{f.name: getattr(self.p, f.name) for f in fields(ClipSpec)})

    def make_clip(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Decode one raw sample into ``{"video", "label", "key", "meta"}`` or raise
        :class:`~dyreg_pyg.data.CorruptSample` (:func:`~dyreg_pyg.data.stages.make_clip`)."""
        return make_clip(sample, self.spec(), rng)

    def pass_buffer(self) -> int:
        """The shuffle buffer: ``shuffle_buffer``, at most the samples the manifest lists
        for the shards (a buffer is also never filled past one pass: each pass is shuffled
        on its own, so no shard is fetched again to fill it)."""
        p = self.p
        counts = [p.shard_counts.get(u) for u in p.urls]
        if all(c is not None for c in counts):
            return max(1, min(p.shuffle_buffer, sum(counts)))
        return p.shuffle_buffer

    # ------------------------------------------------------------------ stages
    def _read(self, shards: Any, rng: random.Random, records: list | None,
              watch: EmptyPasses | None, *more: Any) -> Iterator[dict[str, Any]]:
        """One pass: the tar stage over ``shards``, then ``more`` stages, then the shuffle
        buffer (training)."""
        p = self.p
        stages: list[Any] = [shards, tarfile_samples_counted(
            skips=records, shard_counts=p.shard_counts, read_timeout=p.read_timeout,
            opener=_open_shard, watch=watch), *more]
        bufsize = self.pass_buffer()
        if p.train and bufsize > 1:
            stages.append(wds.shuffle(bufsize, initial=bufsize, rng=rng))
        return iter(wds.DataPipeline(*stages))

    def _passes(self, seed: Any, rng: random.Random, records: list | None,
                watch: EmptyPasses | None, padding: bool = False) -> Iterator[dict[str, Any]]:
        """Training: passes over the shards without end, each every shard once in a fresh
        order (this rank and worker's own), shuffled pass by pass."""
        for shards in shard_passes(self.p.urls, seed):
            for sample in self._read(shards, rng, records, watch):
                if padding:
                    sample["__padding__"] = True
                yield sample

    def _samples(self, worker: int, num_workers: int, rng: random.Random, records: list,
                 watch: EmptyPasses | None) -> Iterator[dict[str, Any]]:
        p = self.p
        seed = [p.seed, self.epoch, p.rank, worker]
        if p.train and p.train_shards == "resample":
            return self._passes(seed, rng, records, watch)
        # one pass in an order shared by every rank and worker: the epoch's ("split") or
        # the listed one (evaluation); split by node and by worker
        order = wds.SimpleShardList(p.urls, seed=str([p.seed, self.epoch, "shards"])
                                    if p.train else None)
        readers, g = p.world_size * num_workers, p.rank * num_workers + worker
        if len(p.urls) >= readers:
            samples = self._read(wds.DataPipeline(
                order, split_by_rank(p.rank, p.world_size), wds.split_by_worker),
                rng, records, watch)
        else:  # fewer shards than readers: every reader reads all, keeps every G-th sample;
            # one of them reports the shards' losses
            samples = self._read(order, rng, records if g == 0 else None, watch,
                                 split_samples(readers, g))
        if p.train:  # "split": a short share is padded with resampled shards; their losses
            # belong to their owner's share and are not counted here
            log.debug("rank %d worker %d: padding after its share", p.rank, worker)
            samples = itertools.chain(samples, self._passes(seed + ["pad"], rng, None, watch,
                                                            padding=True))
        return samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        p = self.p
        worker, num_workers = _worker()
        seed_seq = [p.seed, self.epoch, p.rank, worker]
        rng = random.Random(str(seed_seq))
        records: list[tuple] = []
        watch = EmptyPasses(p.urls) if p.train else None
        samples = self._samples(worker, num_workers, rng, records, watch)
        clips = decode_clips(self.spec(), rng=np.random.default_rng(seed_seq), skips=records,
                             watch=watch)(samples)
        return batch_clips(p.batch_size, partial=p.partial, skips=records)(clips)


def _as_built(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn``: batches come out of :class:`ClipDataset` already
    collated (:func:`collate_clips`), so they pass unchanged. The default, ``default_convert``,
    would walk every number of every clip's metadata (its object boxes: ~1 ms per clip) to
    convert nothing."""
    return batch


class ClipLoader:
    """Iterable over batches; wraps a :class:`torch.utils.data.DataLoader` over a
    :class:`ClipDataset`.

    Attributes:
        skips: :class:`SkipCounter` of all epochs so far.
        epoch_skips: :class:`SkipCounter` of the current (or last) epoch; each lost sample
            is counted once per epoch, however often its shard is read in it.
        epoch_losses: :class:`EpochLosses` of the current (or last) epoch (what counting
            the epoch's losses once over several ranks needs).
        num_batches: Batches per epoch on this rank, ``None`` when the stream decides
            (evaluation: one pass; training without ``epoch_size``: endless).
        epoch: Number of epochs started (each ``iter()`` starts one and reseeds the workers).
    """

    def __init__(self, dataset: ClipDataset, num_workers: int, num_batches: int | None,
                 pin_memory: bool = False, prefetch_factor: int | None = None) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.num_batches = num_batches
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.skips = SkipCounter()
        self.epoch_skips = SkipCounter()
        self.epoch_losses = EpochLosses()
        self.epoch = 0

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("ClipLoader: the number of batches is known only with epoch_size")
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.epoch = self.epoch
        self.epoch += 1
        kw: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kw["prefetch_factor"] = self.prefetch_factor
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, collate_fn=_as_built, **kw)
        self.epoch_skips = SkipCounter()
        self.epoch_losses = EpochLosses()
        return self._run(loader)

    def _run(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        n = 0
        once = self.epoch_losses
        try:
            if self.num_batches == 0:
                return
            for batch in loader:
                records = once.new(batch.pop("skipped", []))
                if records:
                    self.skips.merge(records)
                    self.epoch_skips.merge(records)
                if "video" not in batch:
                    continue
                n += 1  # counted when handed out: the consumer may stop at its last batch
                yield batch
                if self.num_batches is not None and n >= self.num_batches:
                    break
        finally:
            level = logging.WARNING if self.epoch_skips.count else logging.INFO
            log.log(level, "epoch %d: %d batches, %s", self.epoch - 1, n,
                    self.epoch_skips.summary())


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got {rank}/"
                         f"{world_size}")
    return rank, world_size


@dataclass(frozen=True)
class ClipLoaderConfig:
    """How :func:`make_clip_loader` reads clips: every setting but the shards and the split.

    The fields are the loader's former keyword arguments, with the same names and defaults,
    so ``ClipLoaderConfig(**old_keywords)`` migrates a call. Checked when built (a bad value
    raises ``ValueError`` naming the field); change one with :func:`dataclasses.replace`::

        cfg = ClipLoaderConfig(num_frames=8, batch_size=16, crop_size=224,
                               dataset="something", num_workers=8)
        train = make_clip_loader("data/train-{000000..000099}.tar", "train", cfg)
        val = make_clip_loader("data/val-{000000..000009}.tar", "val",
                               dataclasses.replace(cfg, num_crops=3))

    Attributes:
        num_frames: Frames per clip (T).
        batch_size: Clips per batch (per rank).
        num_workers: DataLoader worker processes.
        crop_size: Output side; ``None`` keeps the stored frames (SyncMNIST).
        dataset: ``"syncmnist"``, ``"something"`` or ``"generic"`` (defaults for ``flip`` and
            ``resize_size``, :data:`DATASETS`).
        epoch_size: Training samples per epoch over all ranks (``None``: endless stream).
        shuffle_buffer: Training shuffle buffer size (samples).
        num_clips, num_crops: Evaluation views (``num_crops`` 1 or 3).
        eval_crop_size: Evaluation crop side (default ``crop_size``; the paper uses 256).
        resize_size: Short side before cropping (default 256 for ``"something"``).
        flip: Random horizontal flip in training (default per ``dataset``).
        flip_pairs: Class index -> class index swapped on flip; default: the manifest's
            ``flip_pairs`` next to the shards (Something-Something), else none.
        scales: Multi-scale crop scales (TSM).
        num_classes: Labels outside ``[0, num_classes)`` are skipped; default: the manifest's.
        seed: Seed of every random choice (shards, shuffle, frames, crops, flips); the loader
            additionally mixes in its epoch counter, the rank and the worker id.
        rank, world_size: Default: ``torch.distributed`` if initialised, else 0 and 1.
        pin_memory, prefetch_factor: Passed to the DataLoader.
        partial: Keep the last partial batch (default: only for evaluation).
        jpeg_draft: Let libjpeg decode large JPEGs at reduced size when that still covers
            the crop (faster; the result is resized anyway).
        train_shards: Training shard order: ``"resample"`` (passes without end, each shard
            once per pass in a fresh order) or ``"split"`` (each sample once per epoch over
            all ranks: split by node and by worker; see :func:`make_clip_loader`).
        read_timeout: Seconds a remote shard (HTTP, ``pipe:``) may deliver no byte, and the
            HTTP connect time-out.
    """

    num_frames: int
    batch_size: int
    num_workers: int = 0
    crop_size: int | None = None
    dataset: str = "syncmnist"
    epoch_size: int | None = None
    shuffle_buffer: int = 1000
    num_clips: int = 1
    num_crops: int = 1
    eval_crop_size: int | None = None
    resize_size: int | None = None
    flip: bool | None = None
    flip_pairs: dict[int, int] | None = None
    scales: tuple[float, ...] = TSM_SCALES
    num_classes: int | None = None
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    pin_memory: bool = False
    prefetch_factor: int | None = None
    partial: bool | None = None
    jpeg_draft: bool = True
    train_shards: str = "resample"
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(self.scales))
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {self.dataset!r}")
        for name, low in (("num_frames", 1), ("batch_size", 1), ("num_workers", 0),
                          ("num_clips", 1), ("shuffle_buffer", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops: expected 1 or 3, got {self.num_crops!r}")
        for name in ("crop_size", "eval_crop_size", "resize_size", "epoch_size", "num_classes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected None or an integer >= 1, got {value!r}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales: expected values in (0, 1], got {self.scales}")
        if self.train_shards not in ("resample", "split"):
            raise ValueError(f"train_shards: expected 'resample' or 'split', got "
                             f"{self.train_shards!r}")
        t = self.read_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            raise ValueError(f"read_timeout: expected a number of seconds > 0, got {t!r}")


def make_clip_loader(urls: str | os.PathLike | Sequence[str | os.PathLike], split: str,
                     config: ClipLoaderConfig | None = None, **old_keywords: Any) -> ClipLoader:
    """Streaming clip loader over WebDataset shards (TSN/TSM sampling and augmentation)::

        loader = make_clip_loader("data/train-{000000..000099}.tar", "train",
                                  ClipLoaderConfig(num_frames=8, batch_size=16))

    Shards: a brace pattern (``data/train-{000000..000099}.tar``), several joined by ``::``,
    a list, a local folder (all ``*.tar``), ``http(s)://`` URLs, or ``pipe:`` commands for
    object stores (``pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -``); see
    :mod:`dyreg_pyg.data.remote`. A remote shard that delivers no byte for ``read_timeout``
    seconds, or whose connection drops, is a ``shard_error`` (its remaining samples are lost,
    the stream goes on). The manifest next to the shards (:func:`~dyreg_pyg.data.load_manifest`;
    an HTTP folder's is fetched like a local one) gives defaults and per-shard counts; a
    corrupt one (not a JSON object) raises ``ValueError`` naming it. An empty list, a pattern
    that matches nothing or a missing local shard raises ``ValueError``. The settings
    (:class:`ClipLoaderConfig`, below by their field names) were keyword arguments before:
    ``ClipLoaderConfig(**those_keywords)`` is the same loader.

    * ``split="train"``: shards are read pass after pass, each pass every shard once in a
      fresh order (each rank and worker its own seeded orders; ``train_shards="split"``:
      every epoch, a shard order shared by all ranks, split by node and by worker as for
      evaluation, so that each sample is read once per epoch over all ranks when the shards
      divide evenly among ranks x workers; a share that runs out before the epoch's batches
      is padded with more passes, a longer one is cut). Samples go through a shuffle buffer
      that holds at most one pass (each pass is shuffled on its own, and the buffer is at
      most the manifest's sample count: no shard is fetched again to fill it). One random
      frame is taken in each of ``num_frames`` equal segments, then (if ``crop_size``) short
      side resize to
      ``resize_size``, TSM multi-scale crop to ``crop_size`` and a random horizontal flip
      (default on for ``"something"``, where the labels of left/right class pairs
      ``flip_pairs`` are swapped; off for ``"syncmnist"``). The stream is endless;
      ``epoch_size`` (samples over all ranks) makes each ``iter()`` yield
      ``epoch_size // (batch_size * world_size)`` batches per rank. Partial batches are dropped.
    * ``split`` in ``val/validation/test/eval``: one pass; shards are split by node and by
      worker (or, when there are fewer shards than ``world_size * num_workers`` readers, every
      reader keeps every G-th sample), so every sample is seen exactly once over all ranks;
      the last batch of each worker may be partial. Frames: segment centres, ``num_clips``
      temporal clips; with ``crop_size``, ``num_crops=1`` resizes the short side to
      ``resize_size`` (default ``crop * 256 / 224``) and centre-crops ``eval_crop_size``
      (default ``crop_size``); ``num_crops=3`` resizes the short side to the crop size and
      takes centre, left and right (or top and bottom) crops. ``"test"`` accepts samples with
      no ``.cls`` (label -1).

    Batches are dicts:

    * ``"video"``: uint8 ``[B, T, C, H, W]`` (C = 1 for SyncMNIST, 3 for RGB); with
      ``num_clips * num_crops = V > 1`` views, ``[B, V, T, C, H, W]``, view ``v = clip *
      num_crops + crop`` (crop 0 is the centre one). Normalise on the device with
      :func:`normalize_clip`.
    * ``"label"``: int64 ``[B]`` (flipped-pair swapped where a flip happened).
    * ``"key"``: ``list[str]`` sample keys; ``"meta"``: ``list[dict]`` the sample's JSON plus
      ``frame_indices`` (the frames of clip 0), ``frame_size`` (``[W, H]`` of the output) and,
      when boxes are stored, ``boxes`` mapped into the pixels of view 0.

    Skipped samples (corrupt data, missing ``.cls``, label outside ``[0, num_classes)``, bad
    JSON, unreadable shard) are logged with their key and counted in ``loader.skips`` /
    ``loader.epoch_skips`` (:class:`SkipCounter`); a summary is logged at the end of each epoch.
    A shard stream is read to its end, every archive of concatenated ones (``pipe:cat a.tar
    b.tar``); one that cannot be (missing, not a tar, truncated, a ``pipe:`` command that
    exits non-zero) is a ``shard_error`` under ``<shard URL>``; where the manifest next to
    the shards lists their sample counts, the samples a shard lost are counted
    (``shard_error``, or ``shard_short`` for a shard that reads cleanly but holds fewer
    samples than listed). A training stream
    that produces no usable sample in :data:`MAX_EMPTY_PASSES` passes over its shards raises
    :class:`EmptyDataError` naming them; an evaluation pass simply ends (the caller checks
    that it read something). Each lost sample is counted once per epoch, however often its
    shard is read in it (several passes in one epoch; ``"split"``'s padding counts
    nothing: the shard's owner does), see :class:`EpochLosses`.

    Args:
        urls: Shards (see above).
        split: ``"train"`` or an evaluation split name.
        config: The settings (:class:`ClipLoaderConfig`; required).
        old_keywords: The former keyword form (``num_frames=...``); refused with a
            ``TypeError`` that says how to pass them.

    Returns:
        A :class:`ClipLoader` (iterable; ``len()`` when ``epoch_size`` is set).

    Raises:
        TypeError: ``config`` is not a :class:`ClipLoaderConfig`, or settings came as
            keywords.
        ValueError: an unknown split, 3 evaluation crops without ``crop_size``, no shards, or
            a corrupt manifest.
    """
    if old_keywords or not isinstance(config, ClipLoaderConfig):
        got = f"keywords {sorted(old_keywords)}" if old_keywords else type(config).__name__
        raise TypeError(f"config: expected a ClipLoaderConfig (make_clip_loader(urls, split, "
                        f"ClipLoaderConfig(num_frames=..., batch_size=..., ...))), got {got}")
    if split in _TRAIN_SPLITS:
        train = True
    elif split in _EVAL_SPLITS:
        train = False
    else:
        raise ValueError(f"split: expected one of {_TRAIN_SPLITS + _EVAL_SPLITS}, got {split!r}")
    c = config
    if c.num_crops == 3 and c.crop_size is None and not train:
        raise ValueError("num_crops: 3 crops need crop_size, got crop_size=None")
    shard_urls = expand_shard_urls(urls)
    rank, world_size = _dist_info(c.rank, c.world_size)
    params = _params(c, shard_urls, split, train, rank, world_size)
    num_batches = None
    if train and c.epoch_size is not None:
        num_batches = max(1, c.epoch_size // (c.batch_size * world_size))
    _log_reader_split(params, c.num_workers, split)
    return ClipLoader(ClipDataset(params), c.num_workers, num_batches, pin_memory=c.pin_memory,
                      prefetch_factor=c.prefetch_factor)


def _shard_counts(manifest: dict[str, Any] | None, shard_urls: list[str]) -> dict[str, int]:
    """``{shard URL: samples}`` of the shards the manifest lists with a count."""
    shard_counts: dict[str, int] = {}
    if manifest and isinstance(manifest.get("shards"), list):
        remote = is_http(shard_urls[0])
        folder = shard_urls[0].rpartition("/")[0] if remote else Path(shard_urls[0]).parent
        for entry in manifest["shards"]:
            if isinstance(entry, dict) and "name" in entry and "count" in entry:
                name = str(entry["name"])
                shard_counts[f"{folder}/{name}" if remote else str(folder / name)] = \
                    int(entry["count"])
    return shard_counts


def _params(c: ClipLoaderConfig, shard_urls: list[str], split: str, train: bool, rank: int,
            world_size: int) -> _Params:
    """The resolved parameters of the workers: ``c`` with the manifest's and the dataset's
    defaults filled in and the evaluation-only settings neutral in training."""
    defaults = DATASETS[c.dataset]
    manifest = load_manifest(shard_urls, c.read_timeout)
    num_classes = c.num_classes
    if num_classes is None and manifest and "num_classes" in manifest:
        num_classes = int(manifest["num_classes"])
    flip_pairs = c.flip_pairs
    if flip_pairs is None:
        raw = (manifest or {}).get("flip_pairs") or {}
        flip_pairs = {int(k): int(v) for k, v in dict(raw).items()}
    do_flip = defaults["flip"] if c.flip is None else bool(c.flip)
    if train and do_flip and c.dataset == "something" and not flip_pairs:
        log.warning("flip: no left/right flip_pairs known for these Something-Something shards "
                    "(no manifest); horizontal flip is disabled")
        do_flip = False
    return _Params(
        urls=shard_urls, train=train, test=split == "test", num_frames=c.num_frames,
        batch_size=c.batch_size, crop_size=c.crop_size, eval_crop_size=c.eval_crop_size,
        resize_size=c.resize_size if c.resize_size is not None else defaults["resize_size"],
        num_clips=1 if train else c.num_clips, num_crops=1 if train else c.num_crops,
        flip=do_flip and train, flip_pairs=dict(flip_pairs), scales=tuple(c.scales),
        num_classes=num_classes, shuffle_buffer=c.shuffle_buffer, seed=int(c.seed), rank=rank,
        world_size=world_size, partial=(not train) if c.partial is None else bool(c.partial),
        channels=None, jpeg_draft=c.jpeg_draft,
        shard_counts=_shard_counts(manifest, shard_urls),
        read_timeout=float(c.read_timeout), train_shards=c.train_shards,
    )


def _log_reader_split(p: _Params, num_workers: int, split: str) -> None:
    """Say how the shards fall to the readers (ranks x workers) when they do not divide."""
    readers = p.world_size * max(1, num_workers)
    if p.train and p.train_shards == "split" and len(p.urls) % readers:
        log.warning("train_shards=split: %d shards over %d readers (ranks x workers) give "
                    "uneven shares: a short share is padded with resampled shards, a long one "
                    "is cut at the epoch's end; use a multiple of %d equal shards to read each "
                    "sample exactly once per epoch", len(p.urls), readers, readers)
    if not p.train and len(p.urls) < readers:
        log.info("%d shards < %d readers: splitting %s by sample (every reader reads every "
                 "shard)", len(p.urls), readers, split)

"""Streaming clip loader over WebDataset shards.

The pipeline is a chain of small generator stages, run inside each DataLoader worker::

    shard list -> (train) resample shards | (eval, train "split") split by node and by worker
               -> tar -> samples -> (eval, few shards) keep every G-th sample
               -> (train) shuffle buffer -> decode + sample clip + augment -> batch

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
import json
import logging
import lzma
import os
import random
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import (
    VIDEO_EXTS,
    CorruptSample,
    decode_jpeg,
    decode_npy_frames,
    decode_video,
    frame_members,
)
from .remote import DEFAULT_READ_TIMEOUT, is_http, open_shard
from .shards import expand_shard_urls, load_manifest
from .transforms import (
    TSM_SCALES,
    View,
    apply_view,
    center_crop_view,
    eval_indices,
    multiscale_crop_view,
    three_crop_views,
    train_indices,
    transform_boxes,
)

log = logging.getLogger(__name__)

__all__ = ["SkipCounter", "EpochLosses", "ClipDataset", "ClipLoader", "make_clip_loader",
           "collate_clips", "DATASETS"]

#: Known ``dataset`` values and their defaults.
DATASETS: dict[str, dict[str, Any]] = {
    "syncmnist": {"flip": False, "resize_size": None},
    "something": {"flip": True, "resize_size": 256},
    "generic": {"flip": False, "resize_size": None},
}
_TRAIN_SPLITS = ("train",)
_EVAL_SPLITS = ("val", "validation", "test", "eval")

#: A training stream (shards resampled without end) raises :class:`EmptyDataError` after this
#: many passes - each pass reads every shard at least once - that produced no usable sample.
MAX_EMPTY_PASSES = 3

# Errors of reading a shard: missing or unreadable file, failed pipe, not a tar, truncated or
# corrupt archive or compression. TimeoutError and InterruptedError are OSErrors too, but they
# stop the reader from outside: never caught.
_SHARD_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_NOT_DATA_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, InterruptedError)


class EmptyDataError(RuntimeError):
    """The shards yielded no usable sample (training would wait forever; an evaluation would
    report on nothing). The message names the shards and says why (see
    :meth:`SkipCounter.explain`)."""


@dataclass
class SkipCounter:
    """Skipped samples: ``count``, ``reasons`` (reason -> count) and the first ``keep``
    ``(key, reason, detail)`` examples.

    A sample-level record counts 1. A shard-level record (key ``<shard URL>``) counts the
    samples it lost where the shards' manifest says how many (``shard_error``: unreadable or
    truncated shard; ``shard_short``: fewer samples than listed), else 1 (the shard).
    """

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str, str]] = field(default_factory=list)
    keep: int = 50

    def add(self, key: str, reason: str, detail: str = "", n: int = 1) -> None:
        """Record ``n`` skipped samples (1: one sample) under ``key`` and ``reason``."""
        self.count += n
        self.reasons[reason] += n
        if len(self.examples) < self.keep:
            self.examples.append((key, reason, detail))

    def merge(self, records: Iterable[tuple]) -> None:
        """Add ``(key, reason, detail)`` or ``(key, reason, detail, n)`` records."""
        for rec in records:
            self.add(*rec)

    def as_dict(self) -> dict[str, Any]:
        """``{"count", "reasons", "examples"}`` (JSON-ready; examples as ``[key, reason,
        detail]``, at most 20)."""
        return {"count": self.count, "reasons": dict(sorted(self.reasons.items())),
                "examples": [list(e) for e in self.examples[:20]]}

    def explain(self) -> str:
        """Why no usable sample came out of the shards, from the counts, in one sentence."""
        return explain_skips(self.reasons, [k for k, r, _ in self.examples
                                            if r in ("shard_error", "shard_short")])

    def reset(self) -> None:
        """Forget everything."""
        self.count = 0
        self.reasons.clear()
        self.examples.clear()

    def summary(self) -> str:
        """One line: total and per-reason counts."""
        if not self.count:
            return "no sample skipped"
        parts = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items()))
        return f"{self.count} samples skipped ({parts})"


def explain_skips(reasons: dict[str, int], bad_shards: Sequence[str] = ()) -> str:
    """One sentence on why a stream yielded no usable sample, given its skip ``reasons``
    (reason -> count) and the names of the shards that failed."""
    if not reasons:
        return "the shards hold no sample (empty tar files?)"
    parts = []
    if reasons.get("missing_cls"):
        parts.append(f"{reasons['missing_cls']} samples have no .cls label (an unlabelled "
                     "split such as a test split? evaluation and training need labelled shards)")
    if reasons.get("label_not_in_class_map") or reasons.get("bad_label"):
        n = reasons.get("label_not_in_class_map", 0) + reasons.get("bad_label", 0)
        parts.append(f"{n} samples have a label outside the class map (wrong num_classes or "
                     "shards of another dataset?)")
    if reasons.get("shard_error") or reasons.get("shard_short"):
        names = sorted(set(bad_shards))
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        parts.append("shards could not be read whole" +
                     (f": {', '.join(names[:3])}{more}" if names else ""))
    rest = {r: n for r, n in reasons.items() if r not in (
        "missing_cls", "label_not_in_class_map", "bad_label", "shard_error", "shard_short")}
    if rest:
        parts.append("samples skipped as " + ", ".join(f"{r}: {n}" for r, n in
                                                        sorted(rest.items())))
    return "; ".join(parts)


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


def _take(records: list) -> list:
    """The records so far, emptying ``records`` in place (the tar stage appends to it)."""
    out = list(records)
    records.clear()
    return out


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ClipDataset(IterableDataset):
    """The per-worker pipeline; yields collated batches (see :func:`make_clip_loader`).

    Each yielded dict also carries ``"skipped"``: the ``(key, reason, detail)`` records of the
    samples skipped since the previous batch; a final dict without ``"video"`` carries those
    skipped after the last batch.
    """

    def __init__(self, params: _Params) -> None:
        super().__init__()
        self.p = params
        self.epoch = 0

    # ------------------------------------------------------------------ stages
    def _shards(self, worker: int, num_workers: int, rng: random.Random
                ) -> tuple[Iterator[dict[str, str]], int, int]:
        """Shard URLs for this worker, and the (modulus, remainder) of a sample-level split."""
        p = self.p
        if p.train and p.train_shards == "resample":
            return self._resampled(rng), 1, 0
        urls = list(p.urls)
        if p.train:  # "split": this epoch's shard order, the same on every rank and worker
            random.Random(str([p.seed, self.epoch, "shards"])).shuffle(urls)
        total = p.world_size * num_workers
        g = p.rank * num_workers + worker
        if len(urls) >= total:  # split by node and by worker at shard level
            return iter([{"url": u} for u in urls[g::total]]), 1, 0
        # Fewer shards than readers: everybody reads every shard, keeps every total-th sample.
        return iter([{"url": u} for u in urls]), total, g

    def _resampled(self, rng: random.Random) -> Iterator[dict[str, str]]:
        """Shards drawn with replacement, without end (each rank and worker its own
        sequence)."""
        urls = self.p.urls
        while True:
            yield {"url": urls[rng.randrange(len(urls))]}

    def _padding(self, worker: int, rng: random.Random, skipped: list,
                 watch: _EmptyPasses | None) -> Iterator[dict[str, Any]]:
        """Training with ``train_shards="split"``: samples from resampled shards after this
        reader's share of the epoch is read, so that a rank whose share is short still fills
        the epoch's batches (as ``DistributedSampler`` pads with repeated samples)."""
        p = self.p
        log.debug("rank %d worker %d: its share of the epoch is read; padding with resampled "
                  "shards", p.rank, worker)
        # the padding's shards belong to some reader's share, which counts their losses: a
        # loss seen again here is not counted again (neither a shard's nor a sample's)
        samples = _tar_samples(self._resampled(rng), None, p.shard_counts, watch,
                               p.read_timeout)
        if p.shuffle_buffer > 1:
            samples = _shuffle(samples, p.shuffle_buffer, rng)
        for sample in samples:
            sample["__padding__"] = True
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        p = self.p
        worker, num_workers = _worker()
        seed_seq = [p.seed, self.epoch, p.rank, worker]
        rng = random.Random(str(seed_seq))
        nrng = np.random.default_rng(seed_seq)
        skipped: list[tuple] = []
        shards, modulus, remainder = self._shards(worker, num_workers, rng)
        # with a sample-level split every reader reads every shard: one of them reports it
        report = modulus == 1 or remainder == 0
        watch = _EmptyPasses(p.urls) if p.train else None
        samples: Iterator[dict[str, Any]] = _tar_samples(
            shards, skipped if report else None, p.shard_counts, watch, p.read_timeout)
        if modulus > 1:
            samples = (s for j, s in enumerate(samples) if j % modulus == remainder)
        if p.train and p.shuffle_buffer > 1:
            samples = _shuffle(samples, p.shuffle_buffer, rng)
        if p.train and p.train_shards == "split":
            samples = itertools.chain(samples, self._padding(worker, rng, skipped, watch))
        batch: list[dict[str, Any]] = []
        for sample in samples:
            key = str(sample.get("__key__", "?"))
            try:
                batch.append(self.make_clip(sample, nrng))
            except CorruptSample as exn:
                self._skip(None if sample.get("__padding__") else skipped, key, exn.reason,
                           exn.detail)
                if watch is not None:
                    watch.failed(exn.reason)
                continue
            if watch is not None:
                watch.usable += 1
            if len(batch) == p.batch_size:
                out = collate_clips(batch)
                out["skipped"] = _take(skipped)
                batch = []
                yield out
        if batch and p.partial:
            out = collate_clips(batch)
            out["skipped"] = _take(skipped)
            yield out
        if skipped:
            yield {"skipped": _take(skipped)}

    @staticmethod
    def _skip(records: list | None, key: str, reason: str, detail: str) -> None:
        log.warning("skipping sample %s: %s %s", key, reason, detail[:200])
        if records is not None:
            records.append((key, reason, detail[:300]))

    # ------------------------------------------------------------------ one sample
    def make_clip(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Decode one raw sample into ``{"video", "label", "key", "meta"}`` or raise
        :class:`CorruptSample`."""
        p = self.p
        key = str(sample["__key__"])
        label = self._label(sample)
        meta: dict[str, Any] = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except Exception as exn:
                raise CorruptSample("bad_json", repr(exn)) from exn
            if not isinstance(meta, dict):
                raise CorruptSample("bad_json", f"expected an object, got {type(meta).__name__}")

        def choose(n: int) -> np.ndarray:
            if p.train:
                return train_indices(n, p.num_frames, rng)[None]
            return eval_indices(n, p.num_frames, p.num_clips)

        video_ext = next((e for e in VIDEO_EXTS if e in sample), None)
        draft = None
        if p.jpeg_draft and p.crop_size:
            draft = max(p.resize_size or 0, p.crop_size, p.eval_crop_size or 0)
        if "frames.npy" in sample or "npy" in sample:
            arr = decode_npy_frames(sample.get("frames.npy", sample.get("npy")))
            idx = choose(len(arr))
            uniq, inv = np.unique(idx, return_inverse=True)
            frames = arr[uniq]
            if frames.ndim == 3:
                frames = frames[..., None]
        elif video_ext is not None:
            holder: dict[str, np.ndarray] = {}

            def pick(n: int) -> np.ndarray:
                holder["idx"] = choose(n)
                holder["uniq"], holder["inv"] = np.unique(holder["idx"], return_inverse=True)
                return holder["uniq"]

            decoded, _, _ = decode_video(sample[video_ext], pick)
            idx, uniq, inv = holder["idx"], holder["uniq"], holder["inv"]
            frames = _stack(decoded)
        else:
            names = frame_members(sample)
            if not names:
                found = sorted(k for k in sample if not k.startswith("_"))
                raise CorruptSample("no_frames", f"members {found}")
            idx = choose(len(names))
            uniq, inv = np.unique(idx, return_inverse=True)
            frames = _stack([decode_jpeg(sample[names[i]], draft=draft) for i in uniq])
        if p.channels is not None and frames.shape[-1] != p.channels:
            raise CorruptSample("bad_frames", f"expected {p.channels} channels, got "
                                f"{frames.shape[-1]}")
        stored_h, stored_w = frames.shape[1:3]
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [K,C,H,W]
        views, scale = self._views(clip, rng)
        if views and (scale[0], scale[1]) != (stored_h, stored_w):
            # Fold the short-side resize into the crop: one resize per view, not two.
            views = [_unscale_view(v, scale[1] / stored_w, scale[0] / stored_h, stored_w,
                                   stored_h) for v in views]
        inv = inv.reshape(idx.shape)  # [clips, T] -> positions in the decoded frames
        out_views = []
        for c in range(idx.shape[0]):
            sub = clip[torch.from_numpy(inv[c])]
            if views:
                out_views += [apply_view(sub, v) for v in views]
            else:
                out_views.append(sub.contiguous())
        video = out_views[0] if len(out_views) == 1 else torch.stack(out_views)
        flipped = bool(views and views[0].flip)
        if flipped and label in p.flip_pairs:
            label = p.flip_pairs[label]
        meta["frame_indices"] = idx[0].tolist()
        if idx.shape[0] > 1:
            meta["clip_frame_indices"] = idx.tolist()
        meta["num_views"] = len(out_views)
        if views:
            v0 = views[0]
            size = meta.get("frame_size")  # boxes are in pixels of the stored frames
            ow, oh = (size if isinstance(size, list) and len(size) == 2
                      else (stored_w, stored_h))
            sx, sy = stored_w / float(ow), stored_h / float(oh)
            if isinstance(meta.get("boxes"), list):
                meta["boxes"] = transform_boxes(meta["boxes"], (sx, sy), v0)
            meta["frame_size"] = [v0.out_w, v0.out_h]
            meta["flipped"] = flipped
        else:
            meta.setdefault("frame_size", [int(stored_w), int(stored_h)])
        return {"video": video, "label": label, "key": key, "meta": meta}

    def _label(self, sample: dict[str, Any]) -> int:
        p = self.p
        raw = sample.get("cls")
        if raw is None:
            if p.test:
                return -1
            raise CorruptSample("missing_cls", "no .cls member")
        try:
            label = int(raw.decode().strip() if isinstance(raw, bytes | bytearray) else raw)
        except (ValueError, UnicodeDecodeError) as exn:
            raise CorruptSample("bad_label", repr(raw[:40])) from exn
        if label < 0 or (p.num_classes is not None and label >= p.num_classes):
            raise CorruptSample("label_not_in_class_map",
                                f"label {label} not in [0, {p.num_classes})")
        return label

    def _views(self, clip: torch.Tensor, rng: np.random.Generator
               ) -> tuple[list[View], tuple[int, int, int | None]]:
        """Spatial views and ``(resized H, resized W, short side or None)``."""
        p = self.p
        h, w = clip.shape[-2:]
        if p.crop_size is None:
            return [], (h, w, None)
        if p.train:
            short = p.resize_size
            rh, rw = _resized(h, w, short)
            flip = p.flip and bool(rng.random() < 0.5)
            return [multiscale_crop_view(rh, rw, p.crop_size, rng, p.scales, flip=flip)], \
                (rh, rw, short)
        crop = p.eval_crop_size or p.crop_size
        if p.num_crops == 1:
            short = p.resize_size or round(crop * 256 / 224)
            rh, rw = _resized(h, w, short)
            return [center_crop_view(rh, rw, crop)], (rh, rw, short)
        rh, rw = _resized(h, w, crop)
        return three_crop_views(rh, rw, crop), (rh, rw, crop)


class _EmptyPasses:
    """Training only: counts passes over the shards (a pass ends when every shard has been
    read at least once since it began) that produced no usable sample, and raises
    :class:`EmptyDataError` after :data:`MAX_EMPTY_PASSES` of them while no usable sample has
    come out at all. A pass counts as empty when it read no sample, or when samples reached
    decoding and all failed (a pass that only fills the shuffle buffer does not count)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.pending = set(self.urls)
        self.usable = 0            # clips made since the stream began
        self.empty_passes = 0
        self.reads = 0             # shard reads since the stream began
        self.samples = 0           # raw samples read since the stream began
        self.pass_samples = 0
        self.pass_failed = 0
        self.reasons: Counter = Counter()
        self.errors: dict[str, str] = {}

    def failed(self, reason: str) -> None:
        self.pass_failed += 1
        self.reasons[reason] += 1

    def shard_read(self, url: str, samples: int, error: str | None) -> None:
        self.reads += 1
        self.samples += samples
        self.pass_samples += samples
        if error is not None:
            self.errors.setdefault(url, error)
        self.pending.discard(url)
        if self.pending:
            return
        empty = self.usable == 0 and (self.pass_samples == 0 or self.pass_failed > 0)
        self.empty_passes += empty
        self.pending, self.pass_samples, self.pass_failed = set(self.urls), 0, 0
        if self.empty_passes >= MAX_EMPTY_PASSES:
            raise EmptyDataError(self.message())

    def message(self) -> str:
        names = self.urls[:5] + ([f"... ({len(self.urls) - 5} more)"]
                                 if len(self.urls) > 5 else [])
        reasons = dict(self.reasons)
        if self.errors:
            reasons["shard_error"] = len(self.errors)
        errors = "; ".join(f"{u}: {e}" for u, e in list(self.errors.items())[:3])
        return (f"data: no usable training sample in {self.empty_passes} passes over the "
                f"{len(self.urls)} shard(s) {names} ({self.reads} shard reads, {self.samples} "
                f"samples read, none usable): {explain_skips(reasons, list(self.errors))}"
                + (f". Shard errors: {errors}" if errors else ""))


def _open_shard(url: str, timeout: float) -> Any:
    """A binary stream of the shard ``url`` (a local path, ``file://``, ``http(s)://``,
    ``pipe:`` with reads bounded by ``timeout`` seconds, or another URL that
    ``webdataset.gopen`` knows): :func:`~dyreg_pyg.data.remote.open_shard`."""
    return open_shard(url, timeout)


def _split_name(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member name: the key ends at the first dot of the base name
    (WebDataset's convention)."""
    folder, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key:
        return None
    return (f"{folder}/{key}" if folder else key), ext.lower()


class _ShardReadError(Exception):
    """A shard could not be read to its end; ``samples`` complete ones came before."""

    def __init__(self, what: str, samples: int) -> None:
        super().__init__(what)
        self.what, self.samples = what, samples


#: How far back :class:`_Rewindable` can step: more than tarfile reads ahead of the archive's
#: logical position (one record, 10 KiB).
_REWIND_WINDOW = 1 << 18
#: Marks the end of one tar archive in :func:`_stream_members` (more may follow).
_ARCHIVE_END = object()


class _Rewindable:
    """A forward-only byte stream (``read(n)``) that can step back over the last
    :data:`_REWIND_WINDOW` bytes it handed out: tarfile reads ahead of the end of an archive,
    and the next archive of a concatenated stream starts in what it read."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.pos = 0                   # bytes handed out so far
        self.tail = bytearray()        # the last bytes handed out, ending at ``pos``
        self.pending = b""             # stepped back over: handed out again first

    def read(self, n: int = -1) -> bytes:
        if self.pending:
            size = len(self.pending) if n is None or n < 0 else n
            data, self.pending = self.pending[:size], self.pending[size:]
        else:
            data = self.raw.read(n)
        self.pos += len(data)
        self.tail += data
        if len(self.tail) > 2 * _REWIND_WINDOW:
            del self.tail[:len(self.tail) - _REWIND_WINDOW]
        return data

    def read_exact(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream."""
        chunks, got = [], 0
        while got < n:
            data = self.read(n - got)
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def rewind(self, pos: int) -> None:
        """Step back to the absolute position ``pos`` (``<= self.pos``)."""
        back = self.pos - pos
        if back < 0 or back > len(self.tail):
            raise tarfile.ReadError(f"cannot step back to byte {pos} of the stream (at "
                                    f"{self.pos}, {len(self.tail)} bytes kept)")
        if back:
            self.pending = bytes(self.tail[len(self.tail) - back:]) + self.pending
            del self.tail[len(self.tail) - back:]
        self.pos = pos


def _decompressed(raw: Any) -> _Rewindable:
    """The tar bytes of ``raw``: as they are, or decompressed when they start with a gzip,
    bzip2 or xz signature (each decompressor also reads concatenated compressed streams)."""
    src = _Rewindable(raw)
    head = src.read_exact(6)
    src.rewind(0)
    if head.startswith(b"\x1f\x8b"):
        import gzip

        return _Rewindable(gzip.GzipFile(fileobj=src, mode="rb"))
    if head.startswith(b"BZh"):
        import bz2

        return _Rewindable(bz2.BZ2File(src))
    if head.startswith(b"\xfd7zXZ\x00"):
        return _Rewindable(lzma.LZMAFile(src))
    return src


def _stream_members(raw: Any) -> Iterator[tuple[str, Any] | object]:
    """``(name, read)`` of the regular-file members (``read()``: the member's bytes, to call
    before the next item) of every tar archive in the byte stream
    ``raw``, and :data:`_ARCHIVE_END` after each archive.

    A stream may hold several archives back to back (``cat a.tar b.tar``): tarfile stops at
    the first end-of-archive block, so the zero blocks after it are skipped here and reading
    goes on with the next archive, to the end of the stream (which is also when a ``pipe:``
    command's exit status is checked). An archive must end with a zero block: a stream that
    ends without one (truncated), or holds data that is not a tar header where tarfile
    stopped, raises ``tarfile.ReadError``."""
    src = _decompressed(raw)
    start = 0
    while True:
        tar = tarfile.open(fileobj=src, mode="r|")
        for info in tar:
            if info.isreg():
                yield info.name, tar.extractfile(info).read
            tar.members = []  # a stream keeps every header read: forget them
        end = start + tar.offset  # where tarfile stopped: the end-of-archive block
        src.rewind(end)
        block = src.read_exact(tarfile.BLOCKSIZE)
        if not block:
            raise tarfile.ReadError(f"unexpected end of data at byte {end}: no end-of-archive "
                                    "marker (truncated shard)")
        if len(block) < tarfile.BLOCKSIZE or any(block):
            raise tarfile.ReadError(f"invalid or truncated tar header at byte {end}")
        yield _ARCHIVE_END
        while not any(block):  # the zero blocks between two archives, or at the end
            block = src.read_exact(tarfile.BLOCKSIZE)
            if not block:
                return
        start = src.pos - len(block)  # the next archive starts here
        src.rewind(start)


def _read_shard(url: str, timeout: float = DEFAULT_READ_TIMEOUT) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard (members grouped by key, in order), read as a stream to
    its end: every archive of a stream of concatenated archives (:func:`_stream_members`).

    Raises :class:`_ShardReadError` when the shard cannot be opened or read, ends before an
    end-of-archive marker (a truncated file) or, for a ``pipe:`` command, exits with a
    non-zero status once its output is read; the sample being read then may be incomplete
    (a file cut between two members of a sample looks like one cut between two samples) and
    is not yielded. Members whose names hold no extension or start with ``__`` are ignored.
    """
    n = 0
    current: dict[str, Any] | None = None
    try:
        stream = _open_shard(url, timeout)
    except _NOT_DATA_ERRORS:
        raise
    except (*_SHARD_ERRORS, ValueError) as exn:  # gopen: ValueError for a pipe it cannot open
        raise _ShardReadError(f"cannot open: {exn!r}", 0) from exn
    try:
        try:
            for item in _stream_members(stream):
                if item is _ARCHIVE_END:  # the sample being read is complete
                    if current is not None:
                        n += 1
                        yield current
                    current = None
                    continue
                name, read = item
                parts = _split_name(name)
                if parts is None or name.rpartition("/")[2].startswith("__"):
                    continue
                key, ext = parts
                if current is None or current["__key__"] != key:
                    if current is not None:  # a new key: the previous sample is complete
                        n += 1
                        yield current
                    current = {"__key__": key, "__url__": url}
                data = read()
                if ext in current:
                    log.warning("shard %s: duplicate member %s (the first one is kept)", url,
                                name)
                    continue
                current[ext] = data
        except _NOT_DATA_ERRORS:
            raise
        except _SHARD_ERRORS as exn:
            lost = f" (sample {current['__key__']!r} incomplete)" if current else ""
            raise _ShardReadError(f"{exn!r}{lost}", n) from exn
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except _NOT_DATA_ERRORS:
                raise
            except _SHARD_ERRORS as exn:  # a pipe that exits with an error
                log.warning("shard %s: closing failed: %r", url, exn)


def _tar_samples(shards: Iterable[dict[str, str]], records: list | None,
                 expected: dict[str, int], watch: _EmptyPasses | None,
                 timeout: float = DEFAULT_READ_TIMEOUT) -> Iterator[dict[str, Any]]:
    """Samples of every shard in ``shards``. A shard that fails (or, per the manifest counts
    ``expected``, comes up short) is logged and, when ``records`` is a list, recorded there as
    a ``(<shard URL>, shard_error|shard_short, detail, samples lost)`` skip record."""
    warned_empty: set[str] = set()
    for item in shards:
        url = item["url"]
        want = expected.get(url)
        n, error = 0, None
        try:
            for sample in _read_shard(url, timeout):
                n += 1
                yield sample
        except _ShardReadError as exn:
            error = exn.what
        listed = f" of the {want} the manifest lists" if want is not None else ""
        lost = want - n if want is not None and want > n else 0
        if error is not None:
            detail = f"{error}; read {n} samples{listed}"
            log.warning("shard %s: shard error: %s", url, detail)
            if records is not None:
                records.append((f"<shard {url}>", "shard_error", detail[:300], max(lost, 1)))
        elif lost:
            detail = f"read {n} samples{listed}"
            log.warning("shard %s: %s", url, detail)
            if records is not None:
                records.append((f"<shard {url}>", "shard_short", detail, lost))
        elif n == 0 and url not in warned_empty:
            warned_empty.add(url)
            log.warning("shard %s holds no sample", url)
        if want is not None and n > want:
            log.warning("shard %s: read %d samples, more than the %d the manifest lists "
                        "(a stale manifest?)", url, n, want)
        if watch is not None:
            watch.shard_read(url, n, error)


def _unscale_view(v: View, sx: float, sy: float, w: int, h: int) -> View:
    """``v`` (in a frame resized by ``sx, sy``) expressed in the pixels of the ``w x h``
    frame."""
    x0 = min(max(0, round(v.x0 / sx)), w - 1)
    y0 = min(max(0, round(v.y0 / sy)), h - 1)
    cw = min(max(1, round(v.w / sx)), w - x0)
    ch = min(max(1, round(v.h / sy)), h - y0)
    return View(x0, y0, cw, ch, v.out_w, v.out_h, v.flip)


def _resized(h: int, w: int, short: int | None) -> tuple[int, int]:
    if short is None or min(h, w) == short:
        return h, w
    if h <= w:
        return short, max(1, round(w * short / h))
    return max(1, round(h * short / w)), short


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise CorruptSample("bad_frames", f"frames of different shapes {sorted(shapes)}")
    arr = np.stack(frames)
    return arr[..., None] if arr.ndim == 3 else arr


def _shuffle(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Shuffle buffer: fill to ``bufsize``, then emit a random element for each new one."""
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = s
    rng.shuffle(buf)
    yield from buf


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Clips of :meth:`ClipDataset.make_clip` as one batch: ``video`` stacked
    ``[B, T, C, H, W]``, ``label`` ``[B]`` int64, ``key`` and ``meta`` lists (a
    ``collate_fn`` for a map-style reader of the same clips)."""
    shapes = {tuple(it["video"].shape) for it in items}
    if len(shapes) != 1:
        # Variable frame sizes without a crop: the caller must set crop_size.
        raise ValueError(f"crop_size: clips of a batch differ in shape {sorted(shapes)}; "
                         "set crop_size so that every clip has the same size")
    return {
        "video": torch.stack([it["video"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.int64),
        "key": [it["key"] for it in items],
        "meta": [it["meta"] for it in items],
    }


def _as_built(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn``: batches come out of :class:`ClipDataset` already
    collated (:func:`collate_clips`), so they pass unchanged. The default, ``default_convert``,
    would walk every number of every clip's metadata (its object boxes: ~1 ms per clip) to
    convert nothing."""
    return batch


class EpochLosses:
    """The losses counted in one epoch, by identity, so that each is counted once: a shard
    read again (resampled, e.g. while the shuffle buffer fills) that loses the same samples
    adds nothing (a shard's lost samples are its tail: only a longer loss adds the
    difference), and a sample skipped again (same key and reason) is not counted again.
    :meth:`new` filters a reader's skip records; :meth:`union` counts the losses of several
    ranks' epochs once (a shard lost on two ranks is one loss)."""

    def __init__(self) -> None:
        self.shards: dict[str, dict[str, int]] = {}  # shard key -> {reason: samples lost}
        self.samples: set[tuple[str, str]] = set()    # (sample key, reason)

    def new(self, records: Iterable[tuple]) -> list[tuple]:
        """The records of ``records`` (``(key, reason, detail[, n])``) not counted yet, a
        shard's record with its ``n`` reduced to what it lost beyond its earlier reads."""
        out = []
        for rec in records:
            key, reason, detail = rec[:3]
            n = rec[3] if len(rec) > 3 else 1
            if reason in ("shard_error", "shard_short"):
                seen = self.shards.setdefault(key, {})
                more = n - sum(seen.values())
                if more > 0:
                    seen[reason] = seen.get(reason, 0) + more
                    out.append((key, reason, detail, more))
            elif (key, reason) not in self.samples:
                self.samples.add((key, reason))
                out.append(rec)
        return out

    def state(self) -> dict[str, Any]:
        """JSON-ready (and picklable) contents, for :meth:`union`."""
        return {"shards": {k: dict(v) for k, v in self.shards.items()},
                "samples": sorted(self.samples)}

    @staticmethod
    def union(states: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Reason -> samples lost over several :meth:`state` s, each loss once: a shard's
        largest loss on any of them, each skipped sample once."""
        shards: dict[str, dict[str, int]] = {}
        samples: set[tuple[str, str]] = set()
        for st in states:
            for key, lost in st["shards"].items():
                if sum(lost.values()) > sum(shards.get(key, {}).values()):
                    shards[key] = lost
            samples.update((k, r) for k, r in st["samples"])
        reasons: Counter = Counter()
        for lost in shards.values():
            reasons.update(lost)
        reasons.update(r for _, r in samples)
        return dict(sorted(reasons.items()))


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


def make_clip_loader(urls: str | os.PathLike | Sequence[str | os.PathLike], split: str,
                     num_frames: int, batch_size: int, num_workers: int = 0,
                     crop_size: int | None = None, *, dataset: str = "syncmnist",
                     epoch_size: int | None = None, shuffle_buffer: int = 1000,
                     num_clips: int = 1, num_crops: int = 1, eval_crop_size: int | None = None,
                     resize_size: int | None = None, flip: bool | None = None,
                     flip_pairs: dict[int, int] | None = None,
                     scales: Sequence[float] = TSM_SCALES, num_classes: int | None = None,
                     seed: int = 0, rank: int | None = None, world_size: int | None = None,
                     pin_memory: bool = False, prefetch_factor: int | None = None,
                     partial: bool | None = None, jpeg_draft: bool = True,
                     train_shards: str = "resample",
                     read_timeout: float = DEFAULT_READ_TIMEOUT) -> ClipLoader:
    """Streaming clip loader over WebDataset shards (TSN/TSM sampling and augmentation).

    Shards: a brace pattern (``data/train-{000000..000099}.tar``), several joined by ``::``,
    a list, a local folder (all ``*.tar``), ``http(s)://`` URLs, or ``pipe:`` commands for
    object stores (``pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -``); see
    :mod:`dyreg_pyg.data.remote`. A remote shard that delivers no byte for ``read_timeout``
    seconds, or whose connection drops, is a ``shard_error`` (its remaining samples are lost,
    the stream goes on). The manifest next to the shards (:func:`~dyreg_pyg.data.load_manifest`;
    an HTTP folder's is fetched like a local one) gives defaults and per-shard counts; a
    corrupt one (not a JSON object) raises ``ValueError`` naming it. An empty list, a pattern
    that matches nothing or a missing local shard raises ``ValueError``.

    * ``split="train"``: shards are resampled with replacement (each rank and worker has its
      own seeded sequence; ``train_shards="split"``: every epoch, a shard order shared by all
      ranks, split by node and by worker as for evaluation, so that each sample is read once
      per epoch over all ranks when the shards divide evenly among ranks x workers; a share
      that runs out before the epoch's batches is padded with resampled shards, a longer one
      is cut), samples go through a shuffle buffer, one random frame is taken in
      each of ``num_frames`` equal segments, then (if ``crop_size``) short side resize to
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
    shard is read in it (resampled to fill the shuffle buffer; ``"split"``'s padding counts
    nothing: the shard's owner does), see :class:`EpochLosses`.

    Args:
        urls: Shards (see above).
        split: ``"train"`` or an evaluation split name.
        num_frames: Frames per clip (T).
        batch_size: Clips per batch (per rank).
        num_workers: DataLoader worker processes.
        crop_size: Output side; ``None`` keeps the stored frames (SyncMNIST).
        dataset: ``"syncmnist"``, ``"something"`` or ``"generic"`` (defaults for ``flip`` and
            ``resize_size``).
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
        train_shards: Training shard order: ``"resample"`` (with replacement, endless) or
            ``"split"`` (each sample once per epoch over all ranks: split by node and by
            worker; see above).
        read_timeout: Seconds a remote shard (HTTP, ``pipe:``) may deliver no byte, and the
            HTTP connect time-out.

    Returns:
        A :class:`ClipLoader` (iterable; ``len()`` when ``epoch_size`` is set).
    """
    if split in _TRAIN_SPLITS:
        train = True
    elif split in _EVAL_SPLITS:
        train = False
    else:
        raise ValueError(f"split: expected one of {_TRAIN_SPLITS + _EVAL_SPLITS}, got {split!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {dataset!r}")
    for name, value, low in (("num_frames", num_frames, 1), ("batch_size", batch_size, 1),
                             ("num_workers", num_workers, 0), ("num_clips", num_clips, 1),
                             ("shuffle_buffer", shuffle_buffer, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops: expected 1 or 3, got {num_crops!r}")
    for name, value in (("crop_size", crop_size), ("eval_crop_size", eval_crop_size),
                        ("resize_size", resize_size), ("epoch_size", epoch_size),
                        ("num_classes", num_classes)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected None or an integer >= 1, got {value!r}")
    if num_crops == 3 and crop_size is None and not train:
        raise ValueError("num_crops: 3 crops need crop_size, got crop_size=None")
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales: expected values in (0, 1], got {tuple(scales)}")
    if train_shards not in ("resample", "split"):
        raise ValueError(f"train_shards: expected 'resample' or 'split', got {train_shards!r}")
    if isinstance(read_timeout, bool) or not isinstance(read_timeout, int | float) \
            or not read_timeout > 0:
        raise ValueError(f"read_timeout: expected a number of seconds > 0, got {read_timeout!r}")
    shard_urls = expand_shard_urls(urls)
    rank, world_size = _dist_info(rank, world_size)
    defaults = DATASETS[dataset]
    manifest = load_manifest(shard_urls, read_timeout)
    if num_classes is None and manifest and "num_classes" in manifest:
        num_classes = int(manifest["num_classes"])
    if flip_pairs is None:
        raw = (manifest or {}).get("flip_pairs") or {}
        flip_pairs = {int(k): int(v) for k, v in dict(raw).items()}
    shard_counts: dict[str, int] = {}
    if manifest and isinstance(manifest.get("shards"), list):
        remote = is_http(shard_urls[0])
        folder = shard_urls[0].rpartition("/")[0] if remote else Path(shard_urls[0]).parent
        for entry in manifest["shards"]:
            if isinstance(entry, dict) and "name" in entry and "count" in entry:
                name = str(entry["name"])
                shard_counts[f"{folder}/{name}" if remote else str(folder / name)] = \
                    int(entry["count"])
    do_flip = defaults["flip"] if flip is None else bool(flip)
    if train and do_flip and dataset == "something" and not flip_pairs:
        log.warning("flip: no left/right flip_pairs known for these Something-Something shards "
                    "(no manifest); horizontal flip is disabled")
        do_flip = False
    params = _Params(
        urls=shard_urls, train=train, test=split == "test", num_frames=num_frames,
        batch_size=batch_size, crop_size=crop_size, eval_crop_size=eval_crop_size,
        resize_size=resize_size if resize_size is not None else defaults["resize_size"],
        num_clips=1 if train else num_clips, num_crops=1 if train else num_crops,
        flip=do_flip and train, flip_pairs=dict(flip_pairs), scales=tuple(scales),
        num_classes=num_classes, shuffle_buffer=shuffle_buffer, seed=int(seed), rank=rank,
        world_size=world_size, partial=(not train) if partial is None else bool(partial),
        channels=None, jpeg_draft=jpeg_draft, shard_counts=shard_counts,
        read_timeout=float(read_timeout), train_shards=train_shards,
    )
    num_batches = None
    if train and epoch_size is not None:
        num_batches = max(1, epoch_size // (batch_size * world_size))
    if train and train_shards == "split" and len(shard_urls) % (world_size * max(1, num_workers)):
        log.warning("train_shards=split: %d shards over %d readers (ranks x workers) give "
                    "uneven shares: a short share is padded with resampled shards, a long one "
                    "is cut at the epoch's end; use a multiple of %d equal shards to read each "
                    "sample exactly once per epoch", len(shard_urls),
                    world_size * max(1, num_workers), world_size * max(1, num_workers))
    if not train and len(shard_urls) < world_size * max(1, num_workers):
        log.info("%d shards < %d readers: splitting %s by sample (every reader reads every "
                 "shard)", len(shard_urls), world_size * max(1, num_workers), split)
    return ClipLoader(ClipDataset(params), num_workers, num_batches, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor)

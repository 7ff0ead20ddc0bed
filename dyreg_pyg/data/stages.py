"""WebDataset pipeline stages that keep dyreg-pyg's data guarantees.

Each stage is a plain generator function made curryable with ``webdataset.pipelinefilter``,
so it plugs into any ``wds.DataPipeline`` next to stock webdataset stages (shard lists,
``split_by_node`` / ``split_by_worker``, ``shuffle``, a ``WebLoader``)::

    import webdataset as wds
    from dyreg_pyg.data import stages

    records = []                                   # skip records of this reader
    pipeline = wds.DataPipeline(
        wds.SimpleShardList("data/train-{000000..000003}.tar"),
        wds.split_by_worker,
        stages.tarfile_samples_counted(skips=records, read_timeout=30),
        wds.shuffle(100),
        stages.decode_clips(stages.ClipSpec(num_frames=8, crop_size=112, train=True),
                            skips=records),
        stages.batch_clips(4, partial=True, skips=records),
    )
    skips = stages.SkipCounter()
    for batch in stages.count_skips(wds.WebLoader(pipeline, batch_size=None, num_workers=2),
                                    skips):
        ...

Ours, and why webdataset's own does not do it:

* :func:`tarfile_samples_counted` (for ``wds.tarfile_to_samples``): opens each shard with
  :func:`~dyreg_pyg.data.remote.open_shard` (bounded stall time-outs for HTTP and ``pipe:``,
  a ``pipe:`` command's process group killed on a stall, its exit status checked), reads
  every archive of a stream of concatenated ones, detects a truncated shard (no
  end-of-archive marker) and counts the samples a shard lost per reason, from the manifest's
  per-shard counts. webdataset's tar reader stops at the first end-of-archive block, does
  not notice a file cut at a member boundary, and reports errors to a handler that sees an
  exception, not how many samples it cost (checked with webdataset 1.0.2: of ``cat a.tar
  b.tar`` it yields ``a.tar``'s samples only, and a file cut between two samples ends
  without an error).
* :func:`decode_clips` / :func:`make_clip`: clip decoding, TSN/TSM frame sampling, crops,
  flips and box mapping (webdataset's decoders decode every frame of a sample; ours decode
  what is sampled and skip a corrupt sample with its reason).
* :func:`batch_clips` (for ``wds.batched``): yields a batch as soon as it is full (
  ``wds.batched`` holds a full batch until the next sample arrives, which can open one more
  shard), and carries the skip records of the reader with each batch, so that they cross the
  DataLoader's worker processes; :func:`count_skips` adds them up in the main process, each
  lost sample once per epoch (:class:`EpochLosses`).
* :func:`split_by_rank` (for ``wds.split_by_node``): takes the rank and world size as
  arguments (``wds.split_by_node`` reads them from the environment or
  ``torch.distributed`` only); :func:`split_samples`: every reader reads every shard and
  keeps every G-th sample, when there are fewer shards than readers (``wds.split_by_worker``
  would leave readers with nothing); :func:`shard_passes`: an endless training stream of
  passes, each reading every shard once in a fresh seeded order (``wds.ResampledShards``
  draws with replacement, so a remote shard could be fetched twice in one pass).

Stock webdataset does the rest: ``wds.DataPipeline``, ``wds.SimpleShardList`` (a pass, in a
seeded order), ``wds.split_by_worker``, ``wds.shuffle`` (a buffer; the loader bounds it by
what one pass holds, so that no shard is fetched again to fill it).
"""

from __future__ import annotations

import json
import logging
import lzma
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import webdataset as wds

from .decode import (
    VIDEO_EXTS,
    CorruptSample,
    decode_jpeg,
    decode_npy_frames,
    decode_video,
    frame_members,
)
from .remote import DEFAULT_READ_TIMEOUT, open_shard
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

__all__ = ["ClipSpec", "SkipCounter", "EpochLosses", "EmptyDataError", "MAX_EMPTY_PASSES",
           "explain_skips", "tarfile_samples_counted", "decode_clips", "make_clip",
           "batch_clips", "collate_clips", "count_skips", "split_by_rank", "split_samples",
           "shard_passes", "read_shard", "EmptyPasses"]

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


@dataclass
class ClipSpec:
    """How :func:`make_clip` turns a raw sample into a clip (see
    :func:`~dyreg_pyg.data.make_clip_loader` for the meaning of each field).

    Attributes:
        num_frames: Frames per clip (T).
        train: Training sampling (a random frame per segment, multi-scale crop, flip) instead
            of evaluation sampling (segment centres, ``num_clips`` x ``num_crops`` views).
        crop_size, eval_crop_size, resize_size: Output side, evaluation crop side, short side
            before cropping (``crop_size=None``: keep the stored frames).
        num_clips, num_crops: Evaluation views (``num_crops`` 1 or 3).
        flip, flip_pairs: Random horizontal flip (training) and the class pairs it swaps.
        scales: Multi-scale crop scales.
        num_classes: Labels outside ``[0, num_classes)`` are skipped.
        test: Samples without ``.cls`` get label -1 instead of being skipped.
        channels: Expected channels (``None``: any).
        jpeg_draft: Let libjpeg decode large JPEGs at reduced size when that covers the crop.
    """

    num_frames: int
    train: bool = False
    crop_size: int | None = None
    eval_crop_size: int | None = None
    resize_size: int | None = None
    num_clips: int = 1
    num_crops: int = 1
    flip: bool = False
    flip_pairs: dict[int, int] = field(default_factory=dict)
    scales: tuple[float, ...] = TSM_SCALES
    num_classes: int | None = None
    test: bool = False
    channels: int | None = None
    jpeg_draft: bool = True


def make_clip(sample: dict[str, Any], spec: ClipSpec, rng: np.random.Generator
              ) -> dict[str, Any]:
    """Decode one raw sample (``{"__key__", "cls", "json", <frames or video>}``) into a clip
    ``{"video", "label", "key", "meta"}`` as ``spec`` says: the frame indices are sampled
    first, then only those frames decoded, cropped and flipped, and the sample's boxes
    (``meta["boxes"]``) mapped into the pixels of view 0. Raises :class:`CorruptSample`
    (with its reason) for a sample that cannot be used."""
    p = spec
    key = str(sample["__key__"])
    label = _label(sample, spec)
    meta = _sample_meta(sample)
    frames, idx, inv = _decode_frames(sample, spec, rng)
    stored_h, stored_w = frames.shape[1:3]
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [K,C,H,W]
    views, scale = _views(clip, spec, rng)
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
    _view_meta(meta, views, stored_w, stored_h, flipped)
    return {"video": video, "label": label, "key": key, "meta": meta}


def _sample_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's JSON object (``{}`` without one); ``bad_json`` when it is not one."""
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"])
    except Exception as exn:
        raise CorruptSample("bad_json", repr(exn)) from exn
    if not isinstance(meta, dict):
        raise CorruptSample("bad_json", f"expected an object, got {type(meta).__name__}")
    return meta


def _decode_frames(sample: dict[str, Any], spec: ClipSpec, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(frames, idx, inv)``: the distinct frames the clips need, decoded ``[K, H, W, C]``
    from the sample's array, video or JPEG members; the chosen frame indices ``[clips, T]``;
    each chosen frame's position in ``frames`` (flat)."""
    p = spec

    def choose(n: int) -> np.ndarray:
        if p.train:
            return train_indices(n, p.num_frames, rng)[None]
        return eval_indices(n, p.num_frames, p.num_clips)

    video_ext = next((e for e in VIDEO_EXTS if e in sample), None)
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
        idx, inv = holder["idx"], holder["inv"]
        frames = _stack(decoded)
    else:
        names = frame_members(sample)
        if not names:
            found = sorted(k for k in sample if not k.startswith("_"))
            raise CorruptSample("no_frames", f"members {found}")
        idx = choose(len(names))
        uniq, inv = np.unique(idx, return_inverse=True)
        draft = None
        if p.jpeg_draft and p.crop_size:
            draft = max(p.resize_size or 0, p.crop_size, p.eval_crop_size or 0)
        frames = _stack([decode_jpeg(sample[names[i]], draft=draft) for i in uniq])
    if p.channels is not None and frames.shape[-1] != p.channels:
        raise CorruptSample("bad_frames", f"expected {p.channels} channels, got "
                            f"{frames.shape[-1]}")
    return frames, idx, inv


def _view_meta(meta: dict[str, Any], views: list[View], stored_w: int, stored_h: int,
               flipped: bool) -> None:
    """Fill ``meta`` for the output: ``frame_size``, ``flipped`` and the ``boxes`` mapped into
    the pixels of view 0 (the stored frames' size when there are no views)."""
    if not views:
        meta.setdefault("frame_size", [int(stored_w), int(stored_h)])
        return
    v0 = views[0]
    size = meta.get("frame_size")  # boxes are in pixels of the stored frames
    ow, oh = (size if isinstance(size, list) and len(size) == 2
              else (stored_w, stored_h))
    sx, sy = stored_w / float(ow), stored_h / float(oh)
    if isinstance(meta.get("boxes"), list):
        meta["boxes"] = transform_boxes(meta["boxes"], (sx, sy), v0)
    meta["frame_size"] = [v0.out_w, v0.out_h]
    meta["flipped"] = flipped

def _label(sample: dict[str, Any], spec: ClipSpec) -> int:
    p = spec
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

def _views(clip: torch.Tensor, spec: ClipSpec, rng: np.random.Generator
           ) -> tuple[list[View], tuple[int, int, int | None]]:
    """Spatial views and ``(resized H, resized W, short side or None)``."""
    p = spec
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


class EmptyPasses:
    """Training only: counts passes over the shards (a pass ends when every shard has been
    read at least once since it began) that produced no usable sample, and raises
    :class:`EmptyDataError` after :data:`MAX_EMPTY_PASSES` of them while no usable sample has
    come out at all. A pass counts as empty when it read no sample, or when samples reached
    decoding and all failed (a pass that only fills the shuffle buffer does not count).

    Give the same one as ``watch`` to :func:`tarfile_samples_counted` (which reports each
    shard read) and :func:`decode_clips` (which reports each clip made or failed) of an
    endless training pipeline."""

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


#: Opens a shard: ``opener(url, read_timeout)`` -> a binary stream with ``read(n)`` and
#: ``close()``.
Opener = Callable[[str, float], Any]


def read_shard(url: str, timeout: float = DEFAULT_READ_TIMEOUT, opener: Opener | None = None
               ) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard (members grouped by key, in order), read as a stream to
    its end: every archive of a stream of concatenated archives (:func:`_stream_members`);
    opened with ``opener`` (default :func:`~dyreg_pyg.data.remote.open_shard`: local
    paths, ``http(s)://`` and ``pipe:`` with reads bounded by ``timeout`` seconds).

    Raises :class:`_ShardReadError` when the shard cannot be opened or read, ends before an
    end-of-archive marker (a truncated file) or, for a ``pipe:`` command, exits with a
    non-zero status once its output is read; the sample being read then may be incomplete
    (a file cut between two members of a sample looks like one cut between two samples) and
    is not yielded. Members whose names hold no extension or start with ``__`` are ignored.
    """
    n = 0
    current: dict[str, Any] | None = None
    try:
        stream = (opener or open_shard)(url, timeout)
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


def _record(skips: SkipSink, rec: tuple) -> None:
    if skips is None:
        return
    if isinstance(skips, SkipCounter):
        skips.add(*rec)
    else:
        skips.append(rec)


#: Where a stage puts its skip records ``(key, reason, detail, n)``: a list (the loader's
#: workers: :func:`batch_clips` sends them with the batches), a :class:`SkipCounter` (one
#: process), or ``None`` (not counted: logged only).
SkipSink = list | SkipCounter | None


def _tarfile_samples_counted(shards: Iterable[dict[str, str]], skips: SkipSink = None,
                             shard_counts: dict[str, int] | None = None,
                             read_timeout: float = DEFAULT_READ_TIMEOUT,
                             opener: Opener | None = None, watch: Any = None
                             ) -> Iterator[dict[str, Any]]:
    """Tar stage: the samples (``{"__key__", "__url__", <ext>: bytes}``) of every shard of
    ``shards`` (``{"url": ...}`` dicts, as stock shard lists yield), read by
    :func:`read_shard` (bounded stall time-outs for remote shards, every concatenated
    archive, truncation and ``pipe:`` exit status checked).

    A shard that fails, or that holds fewer samples than ``shard_counts`` (shard URL ->
    samples, from the manifest) lists, is logged and recorded in ``skips`` as
    ``(<shard URL>, "shard_error" | "shard_short", detail, samples lost)`` (1 when the count
    is unknown). ``TimeoutError`` and ``KeyboardInterrupt`` (stop signals, not data errors)
    propagate. ``watch``: an :class:`EmptyPasses` to report each shard read to.

    Hand-written because ``wds.tarfile_to_samples`` stops at the first end-of-archive block
    (a ``pipe:cat a.tar b.tar`` stream loses ``b.tar``), does not see a file cut at a member
    boundary, and its error handlers get an exception, not the number of samples lost.
    """
    expected = shard_counts or {}
    warned_empty: set[str] = set()
    for item in shards:
        url = item["url"]
        want = expected.get(url)
        n, error = 0, None
        try:
            for sample in read_shard(url, read_timeout, opener):
                n += 1
                yield sample
        except _ShardReadError as exn:
            error = exn.what
        listed = f" of the {want} the manifest lists" if want is not None else ""
        lost = want - n if want is not None and want > n else 0
        if error is not None:
            detail = f"{error}; read {n} samples{listed}"
            log.warning("shard %s: shard error: %s", url, detail)
            _record(skips, (f"<shard {url}>", "shard_error", detail[:300], max(lost, 1)))
        elif lost:
            detail = f"read {n} samples{listed}"
            log.warning("shard %s: %s", url, detail)
            _record(skips, (f"<shard {url}>", "shard_short", detail, lost))
        elif n == 0 and url not in warned_empty:
            warned_empty.add(url)
            log.warning("shard %s holds no sample", url)
        if want is not None and n > want:
            log.warning("shard %s: read %d samples, more than the %d the manifest lists "
                        "(a stale manifest?)", url, n, want)
        if watch is not None:
            watch.shard_read(url, n, error)


tarfile_samples_counted = wds.pipelinefilter(_tarfile_samples_counted)


def _decode_clips(samples: Iterable[dict[str, Any]], spec: ClipSpec,
                  rng: np.random.Generator | None = None, seed: Any = 0,
                  skips: SkipSink = None, watch: Any = None) -> Iterator[dict[str, Any]]:
    """Clip stage: each raw sample as a clip (:func:`make_clip` with ``spec``); a sample that
    cannot be used (:class:`~dyreg_pyg.data.CorruptSample`: corrupt frames, missing or bad
    label, bad JSON) is logged with its key and recorded in ``skips`` as ``(key, reason,
    detail)`` (a sample marked ``"__padding__"`` - read again to pad an epoch - is logged
    only). Random choices come from ``rng`` (default: ``numpy.random.default_rng(seed)``).
    ``watch``: an :class:`EmptyPasses` to report each clip to.

    Hand-written because webdataset's decoders decode whole members (every frame of a
    video); this one samples the frame indices first and decodes only what they need.
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    for sample in samples:
        key = str(sample.get("__key__", "?"))
        try:
            clip = make_clip(sample, spec, rng)
        except CorruptSample as exn:
            log.warning("skipping sample %s: %s %s", key, exn.reason, exn.detail[:200])
            if not sample.get("__padding__"):
                _record(skips, (key, exn.reason, exn.detail[:300]))
            if watch is not None:
                watch.failed(exn.reason)
            continue
        if watch is not None:
            watch.usable += 1
        yield clip


decode_clips = wds.pipelinefilter(_decode_clips)


def _take(records: list) -> list:
    """The records so far, emptying ``records`` in place (the stages append to it)."""
    out = list(records)
    records.clear()
    return out


def _batch_clips(clips: Iterable[dict[str, Any]], batch_size: int, partial: bool = False,
                 skips: list | None = None) -> Iterator[dict[str, Any]]:
    """Batch stage: clips collated (:func:`collate_clips`) ``batch_size`` at a time, each
    batch with ``"skipped"``: the records that reached the list ``skips`` since the previous
    batch; after the last batch, a dict with only ``"skipped"`` carries the rest. The last
    partial batch is kept with ``partial``.

    Hand-written because ``wds.batched`` yields a full batch only when the sample after it
    arrives (reading ahead one sample: maybe one more shard), and the skip records must
    travel with the batches out of the DataLoader's worker processes.
    """
    records = [] if skips is None else skips
    batch: list[dict[str, Any]] = []
    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            out = collate_clips(batch)
            out["skipped"] = _take(records)
            batch = []
            yield out
    if batch and partial:
        out = collate_clips(batch)
        out["skipped"] = _take(records)
        yield out
    if records:
        yield {"skipped": _take(records)}


batch_clips = wds.pipelinefilter(_batch_clips)


def count_skips(batches: Iterable[dict[str, Any]], counter: SkipCounter,
                losses: EpochLosses | None = None) -> Iterator[dict[str, Any]]:
    """The batches of :func:`batch_clips` (e.g. out of a ``wds.WebLoader``), their
    ``"skipped"`` records added to ``counter``, each loss once per ``losses`` (default: a new
    :class:`EpochLosses`, i.e. once per call) however often its shard is read; the
    records-only dicts are consumed."""
    once = EpochLosses() if losses is None else losses
    for batch in batches:
        records = once.new(batch.pop("skipped", []))
        if records:
            counter.merge(records)
        if "video" in batch:
            yield batch


def _split_by_rank(src: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Every ``world_size``-th item from the ``rank``-th (shards by node).

    Hand-written because ``wds.split_by_node`` takes the rank and world size from the
    environment (``RANK`` / ``WORLD_SIZE``) or ``torch.distributed`` only; the loader takes
    them as arguments (a test, or ranks that are not the process group's)."""
    for i, item in enumerate(src):
        if i % world_size == rank:
            yield item


split_by_rank = wds.pipelinefilter(_split_by_rank)


def _split_samples(src: Iterable[Any], modulus: int, remainder: int) -> Iterator[Any]:
    """Every ``modulus``-th item from the ``remainder``-th: with fewer shards than readers
    (ranks x workers), every reader reads every shard and keeps its share of the samples
    (splitting the shards, as ``wds.split_by_worker`` does, would leave readers with none)."""
    for i, item in enumerate(src):
        if i % modulus == remainder:
            yield item


split_samples = wds.pipelinefilter(_split_samples)


def shard_passes(urls: Sequence[str], seed: Any = 0, passes: int | None = None
                 ) -> Iterator[wds.SimpleShardList]:
    """Passes over the shards ``urls`` (endless with ``passes=None``): each a
    ``wds.SimpleShardList`` of every shard once, in an order seeded by ``(seed, pass)``; use
    each as the source of a ``wds.DataPipeline`` that reads one pass.

    Hand-written because ``wds.ResampledShards`` draws shards with replacement: in one pass
    over N shards a remote shard can be fetched twice and another not at all. The loader
    shuffles each pass on its own (the buffer never spans two passes), so that no shard is
    fetched again to fill the buffer."""
    k = 0
    while passes is None or k < passes:
        yield wds.SimpleShardList(list(urls), seed=str([seed, "pass", k]))
        k += 1


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


"""Decoded clips held in memory: a training loader with no decoding cost per step.

For small datasets whose training clips need no random augmentation (MultiSyncMNIST: the
stored 10 frames are the clip), decoding the shards once and drawing batches from a seeded
permutation removes the data pipeline from the training loop - on a small CPU machine the
loader's decoding otherwise competes with the compute threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import write_atomic
from .loader import SkipCounter

__all__ = ["InMemoryClips", "InMemoryLoader", "CACHE_FORMAT"]

log = logging.getLogger(__name__)

#: Version of the cache file :meth:`InMemoryClips.save` writes (2: with a content checksum).
CACHE_FORMAT = 2


@dataclass
class InMemoryClips:
    """A split decoded into tensors.

    Attributes:
        videos: uint8 ``[N, T, C, H, W]``.
        labels: int64 ``[N]``.
        keys: the ``N`` sample keys.
        skips: samples the decoding pass skipped (corrupt or unlabelled), by reason.
        boxes: optional float32 ``[N, T, M, 4]`` ground-truth object boxes as regions
            ``(cx, cy, w, h)`` normalised to the frame, ``w, h`` half-widths (for
            ``regions="external"`` models fed the true objects).
    """

    videos: Tensor
    labels: Tensor
    keys: list[str]
    skips: SkipCounter
    boxes: Tensor | None = None

    def __post_init__(self) -> None:
        if self.videos.dim() != 5 or self.videos.dtype != torch.uint8:
            raise ValueError(f"videos: expected uint8 [N, T, C, H, W], got {self.videos.dtype} "
                             f"{tuple(self.videos.shape)}")
        n = self.videos.shape[0]
        if self.labels.shape != (n,) or len(self.keys) != n:
            raise ValueError(f"labels, keys: expected {n} of each, got labels "
                             f"{tuple(self.labels.shape)} and {len(self.keys)} keys")
        if self.boxes is not None and (self.boxes.dim() != 4 or self.boxes.shape[:2] != (
                n, self.videos.shape[1]) or self.boxes.shape[-1] != 4):
            raise ValueError(f"boxes: expected [N={n}, T={self.videos.shape[1]}, M, 4], got "
                             f"{tuple(self.boxes.shape)}")

    def __len__(self) -> int:
        return self.videos.shape[0]

    @classmethod
    def from_batches(cls, batches: Iterable[dict[str, Any]],
                     skips: SkipCounter | None = None) -> InMemoryClips:
        """Collect the batches of one pass of an evaluation-mode loader (single view:
        ``video [B, T, C, H, W]``), sorted by key so that the result does not depend on the
        number of loader workers. ``skips`` is the loader's counter, read after the pass.
        Boxes are kept when every batch carries ``boxes [B, T, M, 4]`` with the same ``M``."""
        videos, labels, keys, boxes = [], [], [], []
        for batch in batches:
            video = batch["video"]
            if video.dim() != 5:
                raise ValueError(f"video: expected single-view [B, T, C, H, W] batches, got "
                                 f"{tuple(video.shape)}")
            videos.append(video)
            labels.append(batch["label"])
            keys += list(batch["key"])
            boxes.append(batch.get("boxes"))
        if not videos:
            why = f": {skips.explain()}" if skips is not None else ""
            raise ValueError(f"batches: the loader yielded no sample{why}")
        order = sorted(range(len(keys)), key=keys.__getitem__)
        index = torch.tensor(order, dtype=torch.long)
        stacked = torch.cat(videos)
        videos.clear()  # at most two copies of the split at once
        same_m = all(b is not None for b in boxes) and len({b.shape[2] for b in boxes}) == 1
        if not same_m and any(b is not None for b in boxes):
            log.warning("in memory: boxes dropped: %d of %d batches have none, or their object "
                        "counts differ", sum(b is None for b in boxes), len(boxes))
        clips = cls(stacked[index], torch.cat(labels).long()[index],
                    [keys[i] for i in order], skips or SkipCounter(),
                    torch.cat(boxes)[index] if same_m else None)
        log.info("in memory: %d clips of %s (%.0f MB), %s", len(clips),
                 tuple(clips.videos.shape[1:]), clips.videos.numel() / 2**20,
                 clips.skips.summary())
        return clips

    def checksum(self) -> str:
        """A hash (SHA-256) of the clips' content: the frames' bytes, labels, keys and boxes
        (0.27 s for 4000 clips of 10 x 64 x 64, 156 MB, on one core of the 2-core test
        machine, where decoding them takes minutes)."""
        h = hashlib.sha256()
        for t in (self.videos, self.labels, self.boxes):
            if t is None:
                h.update(b"none")
                continue
            h.update(f"{t.dtype} {tuple(t.shape)};".encode())
            h.update(memoryview(t.detach().contiguous().numpy()).cast("B"))
        h.update("\n".join(self.keys).encode())
        return "sha256:" + h.hexdigest()

    def save(self, path: str | os.PathLike, fingerprint: str) -> Path:
        """Write the clips to ``path`` atomically (temporary file, fsync, rename), tagged with
        ``fingerprint`` (what they were decoded from, e.g. the shards' names, sizes and times),
        so that :meth:`load` can refuse a file that no longer matches its shards, and with
        their :meth:`checksum`, so that it can refuse a file whose content changed."""
        state = {"format": CACHE_FORMAT, "fingerprint": fingerprint,
                 "checksum": self.checksum(), "videos": self.videos,
                 "labels": self.labels, "keys": self.keys, "boxes": self.boxes,
                 "skips": {"count": self.skips.count, "reasons": dict(self.skips.reasons),
                           "examples": [list(e) for e in self.skips.examples]}}
        return write_atomic(path, lambda fh: torch.save(state, fh))

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str | None = None,
             mmap: bool = True, num_classes: int | None = None) -> InMemoryClips:
        """Read clips written by :meth:`save` (``weights_only=True``). With ``mmap`` the
        videos stay in the file and are paged in as batches read them, so several processes
        training on one cache share one copy in the page cache.

        The content is checked against the checksum written with it (a memory-mapped load
        does not verify the zip's own CRCs: flipped bytes would otherwise be used silently),
        which reads the file once, and every label must lie in ``[0, num_classes)`` (given)
        or be ``>= 0``.

        Raises:
            ValueError: (naming ``path`` and the reason) the file is unreadable, is not such
                a file (or one of an older format), is incomplete, its fingerprint is not
                ``fingerprint`` (given), its content does not match its checksum, or a label
                is out of range.
        """
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # missing, truncated zip, bad pickle opcodes, ...
            raise ValueError(f"{path}: not a readable in-memory clip cache: {err}") from err
        if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path}: expected an in-memory clip cache (format "
                             f"{CACHE_FORMAT}), got format {got!r}")
        if fingerprint is not None and state.get("fingerprint") != fingerprint:
            raise ValueError(f"{path}: decoded from other data than these: "
                             f"{_first_difference(state.get('fingerprint'), fingerprint)}")
        try:
            skips = SkipCounter()
            skips.examples.extend(tuple(e) for e in state["skips"]["examples"])
            skips.count = int(state["skips"]["count"])
            skips.reasons.update(state["skips"]["reasons"])
            clips = cls(state["videos"], state["labels"], list(state["keys"]), skips,
                        state["boxes"])
            stored = str(state["checksum"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: an incomplete in-memory clip cache: {err!r}") from err
        if clips.checksum() != stored:
            raise ValueError(f"{path}: content does not match its checksum (the file was "
                             "changed or damaged after it was written)")
        bad = (clips.labels < 0) | (clips.labels >= num_classes if num_classes is not None
                                    else torch.zeros_like(clips.labels, dtype=torch.bool))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            want = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ValueError(f"{path}: {int(bad.sum())} labels out of range {want}, e.g. "
                             f"{int(clips.labels[i])} of sample {clips.keys[i]!r}")
        return clips

    def loader(self, batch_size: int, seed: int, rank: int = 0,
               world_size: int = 1) -> InMemoryLoader:
        """One epoch of shuffled training batches for ``rank`` (see :class:`InMemoryLoader`)."""
        return InMemoryLoader(self, batch_size, seed, rank, world_size)


def _first_difference(cached: Any, now: str) -> str:
    """The first entry in which two JSON fingerprints differ, e.g. one shard's size or time,
    or one entry of the shards' manifest (``manifest.class_names[3] is ...``), never two
    whole manifests."""
    import json

    try:
        a, b = json.loads(cached), json.loads(now)
    except (TypeError, ValueError):
        return f"fingerprint {str(cached)[:80]!r} in the cache, {now[:80]!r} now"
    where, x, y = _diff(a, b, "")
    return f"{where or 'fingerprint'} is {_short(x)} in the cache, {_short(y)} now"


def _diff(a: Any, b: Any, where: str) -> tuple[str, Any, Any]:
    """``(path, a's value, b's value)`` of the first difference of two JSON values (``a !=
    b``): the deepest entry where they differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return (f"{where}.{key}" if where else str(key)), a.get(key, "<absent>"), \
                    b.get(key, "<absent>")
            if a[key] != b[key]:
                return _diff(a[key], b[key], f"{where}.{key}" if where else str(key))
    if isinstance(a, list) and isinstance(b, list):
        for i, (u, v) in enumerate(zip(a, b)):
            if u != v:  # a list's entry is shown whole (a shard's [path, size, time])
                return _diff(u, v, f"{where}[{i}]") if isinstance(u, dict) else \
                    (f"{where}[{i}]", u, v)
        return f"{where} (length)", f"{len(a)} entries", f"{len(b)} entries"
    return where, a, b


def _short(value: Any, limit: int = 240) -> str:
    marker = isinstance(value, str) and (value == "<absent>" or value.endswith(" entries"))
    text = value if marker else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class InMemoryLoader:
    """Shuffled full batches of :class:`InMemoryClips` for one epoch.

    The permutation depends only on ``seed``; rank ``r`` of ``world_size`` takes batches
    ``r, r + world_size, ...`` of it, so the ranks see disjoint clips and each yields
    ``len(clips) // (batch_size * world_size)`` batches (the remainder is dropped, as the
    streaming loader drops partial training batches). Batches: ``{"video", "label", "key"}``,
    plus ``"boxes"`` when the clips have them.
    """

    def __init__(self, clips: InMemoryClips, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"batch_size, rank, world_size: expected >= 1 and 0 <= rank < "
                             f"world_size, got {batch_size}, {rank}, {world_size}")
        self.clips, self.batch_size, self.seed = clips, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_batches = len(clips) // (batch_size * world_size)
        if self.num_batches == 0:
            raise ValueError(f"batch_size: {len(clips)} clips make no full batch of "
                             f"{batch_size} x {world_size} ranks")

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.clips), generator=gen)
        for i in range(self.num_batches):
            start = (i * self.world_size + self.rank) * self.batch_size
            idx = order[start:start + self.batch_size]
            batch = {"video": self.clips.videos[idx], "label": self.clips.labels[idx],
                     "key": [self.clips.keys[j] for j in idx.tolist()]}
            if self.clips.boxes is not None:
                batch["boxes"] = self.clips.boxes[idx]
            yield batch

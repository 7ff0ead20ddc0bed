"""Glue between the training config and :mod:`dyreg_pyg.data` loaders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import TrainConfig

if TYPE_CHECKING:
    from dyreg_pyg.data import ClipLoaderConfig

__all__ = ["make_loader", "loader_config", "load_train_in_memory", "train_fingerprint",
           "DECODED_FORMAT",
           "normalise", "read_num_classes", "read_split_size", "batch_object_centres",
           "batch_object_boxes", "external_regions", "split_pattern", "read_class_names"]

log = logging.getLogger("train")


def _seed(cfg: TrainConfig, epoch: int) -> int:
    return cfg.seed * 100_003 + epoch


def make_loader(cfg: TrainConfig, split: str, epoch: int = 0, memory=None):
    """The clip loader of ``cfg.data`` for ``split`` ("train" or "val"): streaming from the
    shards, or, for training with ``memory`` (:class:`~dyreg_pyg.data.InMemoryClips`),
    shuffled batches of the decoded clips."""
    from dyreg_pyg.data import make_clip_loader

    d = cfg.data
    urls = d.train if split == "train" else d.val
    if not urls:
        raise ValueError(f"data.{split}: no shard pattern given")
    train = split == "train"
    if train and memory is not None:
        dist = torch.distributed
        ddp = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
        return memory.loader(d.batch_size, _seed(cfg, epoch), rank, world)
    return make_clip_loader(urls, "train" if train else "val", loader_config(cfg, split, epoch))


def loader_config(cfg: TrainConfig, split: str, epoch: int = 0) -> ClipLoaderConfig:
    """The :class:`~dyreg_pyg.data.ClipLoaderConfig` of ``cfg.data`` for ``split`` ("train"
    or "val") in epoch ``epoch`` (its seed)."""
    from dyreg_pyg.data import ClipLoaderConfig  # noqa: F811 (the annotation's, at run time)

    d, train = cfg.data, split == "train"
    return ClipLoaderConfig(
        num_frames=d.num_frames,
        batch_size=d.batch_size if train else (d.eval_batch_size or d.batch_size),
        num_workers=d.num_workers,
        crop_size=d.crop_size,
        dataset=d.dataset,
        epoch_size=d.epoch_size if train else None,
        shuffle_buffer=d.shuffle,
        num_clips=1 if train else d.num_clips,
        num_crops=1 if train else d.num_crops,
        seed=_seed(cfg, epoch),
        train_shards=d.train_shards,
        read_timeout=d.read_timeout,
    )


#: Version of what :func:`_decode_train` produces (frames, labels, keys, boxes); part of
#: :func:`train_fingerprint`, so bumping it invalidates every decoded-split cache.
DECODED_FORMAT = 1


def train_fingerprint(cfg: TrainConfig) -> str | None:
    """What the decoded training split of ``cfg.data`` depends on, as a JSON string: every
    training shard's path, size and modification time, the shards' manifest, the frames,
    crop and dataset, and :data:`DECODED_FORMAT`. ``None`` when a shard is not a local file
    (nothing cheap tells whether it changed)."""
    import json

    from dyreg_pyg.data import load_manifest
    from dyreg_pyg.data.shards import expand_shard_urls

    d = cfg.data
    shards = []
    for url in expand_shard_urls(d.train):
        path = Path(url.removeprefix("file://"))
        if ("://" in url and not url.startswith("file://")) or not path.is_file():
            return None
        st = path.stat()
        shards.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return json.dumps({"decoded_format": DECODED_FORMAT, "shards": shards,
                       "manifest": load_manifest(d.train), "num_frames": d.num_frames,
                       "crop_size": d.crop_size, "dataset": d.dataset}, sort_keys=True)


def load_train_in_memory(cfg: TrainConfig, cache: str | Path | None = None):
    """Decode every training clip of ``cfg.data.train`` once (deterministic frames, no
    augmentation) into :class:`~dyreg_pyg.data.InMemoryClips`; skipped samples are counted.
    The caller's random state is left untouched, so a run is the same whether its clips were
    decoded inside :func:`~train.loop.fit` or passed in.

    With ``cache`` (a file path) the decoded clips are read from that file when it was
    written from the same data (:func:`train_fingerprint`), memory-mapped so that runs side
    by side share one copy; otherwise they are decoded and the file is (re)written. The file
    must only ever be replaced whole (as this function does): changing it in place under a
    run that maps it crashes that run. A cache whose content does not match the checksum
    written with it, or that holds a label outside ``[0, num_classes)`` (``data.num_classes``
    or the manifest's), is decoded again with a warning naming the reason. Shards that are
    not local files are always decoded; a cache that cannot be written (full disk: torch
    raises ``OSError`` or ``RuntimeError``; read-only folder) is skipped with a warning."""
    from dyreg_pyg.data import InMemoryClips

    fingerprint = train_fingerprint(cfg) if cache is not None else None
    if cache is not None and fingerprint is None:
        log.info("data.in_memory: no cache: the training shards are not all local files")
    if fingerprint is not None:
        try:
            clips = InMemoryClips.load(cache, fingerprint, num_classes=_num_classes(cfg))
        except ValueError as err:
            if Path(cache).exists():
                log.warning("data.in_memory: cache not used, decoding again: %s", err)
        else:
            log.info("data.in_memory: %d clips from %s (%s)", len(clips), cache,
                     clips.skips.summary())
            return clips
    clips = _decode_train(cfg)
    if fingerprint is not None:
        _remove_stale_temporaries(Path(cache))
        try:
            clips.save(cache, fingerprint)
        # the cache only saves time: the run goes on without it. torch.save reports a full
        # disk as a RuntimeError ("PytorchStreamWriter failed writing file ...")
        except (OSError, RuntimeError) as err:
            log.warning("data.in_memory: could not write the cache %s (the run goes on "
                        "without it): %s", cache, err)
        else:
            log.info("data.in_memory: decoded clips cached in %s", cache)
    return clips


def _num_classes(cfg: TrainConfig) -> int | None:
    """``data.num_classes``, else the (local) training manifest's, else ``None``."""
    from dyreg_pyg.data import load_manifest

    if cfg.data.num_classes:
        return int(cfg.data.num_classes)
    value = (load_manifest(cfg.data.train) or {}).get("num_classes")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _remove_stale_temporaries(cache: Path, older_than_s: float = 600.0) -> int:
    """Remove the temporary files that writers of ``cache`` killed mid-write left behind
    (``.<name>.*.tmp``, each as large as the cache), once untouched for ``older_than_s``
    seconds - a live writer's file is being written to, so it is newer. Each removal is
    logged by name; returns how many were removed."""
    import time

    removed = 0
    for tmp in cache.parent.glob(f".{cache.name}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime < older_than_s:
                continue
            size = tmp.stat().st_size
            tmp.unlink()
        except FileNotFoundError:  # another process removed or renamed it first
            continue
        removed += 1
        log.warning("data.in_memory: removed %s (%.0f MB), left by a cache writer that was "
                    "stopped mid-write", tmp, size / 2**20)
    return removed


def _decode_train(cfg: TrainConfig):
    from dyreg_pyg.data import ClipLoaderConfig, InMemoryClips, make_clip_loader

    d = cfg.data
    loader = make_clip_loader(d.train, "val", ClipLoaderConfig(
        num_frames=d.num_frames, batch_size=256, num_workers=d.num_workers,
        crop_size=d.crop_size, dataset=d.dataset, rank=0, world_size=1,
        read_timeout=d.read_timeout))
    def checked(batches):
        want = list(range(d.num_frames))
        for batch in batches:
            for key, meta in zip(batch["key"], batch.get("meta") or []):
                if meta.get("frame_indices") != want:
                    raise ValueError(
                        f"data.in_memory: sample {key!r} does not store exactly "
                        f"data.num_frames={d.num_frames} frames (picked "
                        f"{meta.get('frame_indices')}), so training would sample frames at "
                        "random; stream it instead (data.in_memory=false)"
                    )
            boxes, mask = batch_object_boxes(batch)
            if boxes is not None and bool(mask.all()):
                batch["boxes"] = boxes
            yield batch

    with torch.random.fork_rng(devices=[]):  # iterating a DataLoader draws from torch's RNG
        return InMemoryClips.from_batches(checked(loader), loader.skips)


def normalise(video: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """uint8 clips ``[..., C, H, W]`` -> float, ``(x / 255 - mean) / std`` (on any device)."""
    from dyreg_pyg.data import normalize_clip

    return normalize_clip(video, cfg.data.mean, cfg.data.std)


def read_num_classes(pattern: str, timeout: float = 60.0) -> int:
    """Number of classes from the shards' manifest (:func:`~dyreg_pyg.data.load_manifest`:
    a local folder or an HTTP(S) server, each read bounded by ``timeout`` seconds, as
    ``data.read_timeout``; a corrupt one raises ``ValueError``, a server that cannot be
    reached or does not answer ``OSError``); set ``data.num_classes`` if there is none."""
    from dyreg_pyg.data import load_manifest

    m = load_manifest(pattern, timeout)
    if not m or "num_classes" not in m:
        raise ValueError(
            f"data.num_classes: not set and no manifest with 'num_classes' next to {pattern!r}"
        )
    return int(m["num_classes"])


def read_class_names(pattern: str, num_classes: int, timeout: float = 60.0,
                     fetch: bool = True) -> list[str] | None:
    """The ``class_names`` of the shards' manifest, if it lists ``num_classes`` of them;
    ``None`` otherwise (no manifest, none listed, another count: names are a convenience).
    A corrupt manifest (not a JSON object) raises ``ValueError`` naming it, as it does for
    the loader (:func:`~dyreg_pyg.data.load_manifest`; reads bounded by ``timeout``
    seconds). ``fetch=False``: a manifest that would come over HTTP(S) is not fetched
    (``None``; a run with ``data.num_classes`` and ``data.epoch_size`` set needs none)."""
    from dyreg_pyg.data import load_manifest
    from dyreg_pyg.data.remote import is_http
    from dyreg_pyg.data.shards import expand_shard_urls

    if not fetch and is_http(expand_shard_urls(pattern)[0]):
        log.info("no class names: data.num_classes and data.epoch_size are set, so the "
                 "manifest next to %r is not fetched", pattern)
        return None
    m = load_manifest(pattern, timeout)
    names = (m or {}).get("class_names")
    if not isinstance(names, list) or not names:
        return None
    if len(names) != num_classes:
        log.warning("no class names: the manifest next to %r lists %d, the model has %d "
                    "classes", pattern, len(names), num_classes)
        return None
    return [str(n) for n in names]


def read_split_size(pattern: str, timeout: float = 60.0) -> int:
    """Number of samples of a split from its manifest (reads bounded by ``timeout``
    seconds, see :func:`read_num_classes`); set ``data.epoch_size`` otherwise."""
    from dyreg_pyg.data import load_manifest

    m = load_manifest(pattern, timeout)
    if not m:
        if any(p.strip().startswith("pipe:") for p in str(pattern).split("::")):
            raise ValueError(f"data.epoch_size: not set, and {pattern!r} are pipe: shards, "
                             "which have no manifest to count them: set data.epoch_size "
                             "(training samples per epoch, e.g. 168913 for SSv2)")
        raise ValueError(f"data.epoch_size: not set and no manifest next to {pattern!r}")
    for key in ("num_samples", "count", "total"):
        if key in m:
            return int(m[key])
    raise ValueError(f"data.epoch_size: the manifest next to {pattern!r} has no sample count")


def batch_object_boxes(batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Ground-truth object boxes ``[B, T, M, 4]`` as regions ``(cx, cy, w, h)`` normalised to
    the clip, with a mask ``[B, T, M]`` of the boxes that exist. As for every region,
    ``w, h`` are the support's half-widths (Eq. 6), so the region's support is the box.

    Reads ``meta["boxes"]`` (per frame, per object ``(x0, y0, x1, y1)`` in pixels of the
    clip's frames, as MultiSyncMNIST stores them) for samples that have them; object ``k`` is
    the same object in every frame; a frame may also list its boxes flat
    (``x0, y0, x1, y1, x0, ...``), or be an array. ``M`` is the most objects of any stored
    frame. ``None, None`` when no sample of the batch has boxes.
    """
    metas = batch.get("meta") or []
    video = batch["video"]
    h, w = video.shape[-2:]
    t = video.shape[-4]
    if not metas or not any(isinstance(m, dict) and m.get("boxes") for m in metas):
        return None, None
    # one pass over the metadata into flat lists, then one tensor: a per-frame tensor and
    # indexed writes cost ~1 ms per clip, which made this the in-memory decoding's bottleneck
    def objects(frame: Any) -> list:  # [[x0, y0, x1, y1], ...] (or flat x0, y0, x1, y1, ...)
        if hasattr(frame, "tolist"):  # a numpy array or a tensor
            frame = frame.tolist()
        if frame and not isinstance(frame[0], (list, tuple)):
            return [frame[i:i + 4] for i in range(0, len(frame), 4)]
        return frame

    xyxy, where, sizes = [], [], []
    m_max = 1
    for b, meta in enumerate(metas):
        per_frame = meta.get("boxes") if isinstance(meta, dict) else None
        if not per_frame:
            continue
        size = tuple(meta.get("frame_size") or (w, h))
        frames = meta.get("frame_indices") or list(range(min(t, len(per_frame))))
        m_max = max(m_max, *(len(objects(f)) for f in per_frame))  # every frame, as stored
        for j, fi in enumerate(frames[:t]):
            for k, box in enumerate(objects(per_frame[fi])):
                xyxy.append(box)
                where.append((b, j, k))
                sizes.append(size)
    boxes = torch.zeros(len(metas), t, m_max, 4)
    mask = torch.zeros(len(metas), t, m_max, dtype=torch.bool)
    if xyxy:
        xy = torch.tensor(xyxy, dtype=torch.float32).view(-1, 4)
        wh = torch.tensor(sizes, dtype=torch.float32).repeat(1, 2)  # (W, H, W, H)
        idx = tuple(torch.tensor(where, dtype=torch.long).unbind(1))
        # centres, then half-widths: a region's radius
        boxes[idx] = torch.cat([(xy[:, :2] + xy[:, 2:]) / 2, (xy[:, 2:] - xy[:, :2]) / 2],
                               1) / wh
        mask[idx] = True
    return boxes, mask


def batch_object_centres(batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Ground-truth object centres ``[B, T, M, 2]`` normalised to the clip, with a mask
    (the centres of :func:`batch_object_boxes`)."""
    boxes, mask = batch_object_boxes(batch)
    return (None, None) if boxes is None else (boxes[..., :2].contiguous(), mask)


def external_regions(batch: dict[str, Any]) -> torch.Tensor:
    """The regions ``[B, T, M, 4]`` for a ``regions="external"`` (oracle) model: the batch's
    ``boxes`` (clips held in memory) or its ground-truth boxes (:func:`batch_object_boxes`).
    Raises ``ValueError`` unless every object has a box in every frame."""
    boxes = batch.get("boxes")
    if boxes is not None:
        return boxes
    boxes, mask = batch_object_boxes(batch)
    if boxes is None or not bool(mask.all()):
        raise ValueError("regions='external': the model needs every object's box in every frame "
                         "(meta['boxes'], as MultiSyncMNIST stores them); this batch has "
                         f"{'none' if boxes is None else 'some missing'} (clips held in memory "
                         "keep boxes only when every sample has all of them)")
    return boxes


def split_pattern(folder: str | Path, split: str) -> str:
    """The brace pattern of every ``<split>-NNNNNN.tar`` shard in ``folder`` (as written by
    the shard builders), e.g. ``<folder>/val-{000000..000001}.tar``."""
    from dyreg_pyg.data.shards import brace_pattern

    names = sorted(p.name for p in Path(folder).glob(f"{split}-*.tar"))
    if not names:
        raise ValueError(f"{folder}: no {split}-*.tar shards")
    return brace_pattern(folder, names)

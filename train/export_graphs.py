"""``python -m train export-graphs``: the region graphs of a trained model over a set of
videos, as a PyG dataset (:class:`dyreg_pyg.export.RegionGraphDataset`).

Streaming (one batch of clips at a time), with a progress bar (tqdm when installed, else a
log line every few hundred videos) and the videos skipped counted by reason; resumable: the
graphs are committed in chunks (one SQLite transaction each) and ``progress.json`` is
replaced atomically after each, so a run interrupted at any point continues with
``--out`` the same folder. On resume the loader reads the shards again from the start (the
evaluation stream is deterministic) and only the videos not yet written go through the model;
the key of the last written video is checked, so data that changed in between is an error,
and so is a checkpoint with other content (its SHA-256 is recorded in ``export.json``: a
``best.pt`` replaced by a running fit would otherwise add graphs of another model). One
process writes a folder at a time (a second one is told that another export is running).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyreg_pyg.data import ClipLoaderConfig, make_clip_loader
from dyreg_pyg.export import RegionGraphWriter, record_region_graphs
from dyreg_pyg.geometry import edge_attr_columns

from .data import external_regions, normalise, read_split_size
from .logs import progress_bar_wanted
from .loop import load_trained
from .predict import class_names_for, pick_device

__all__ = ["export_graphs"]

log = logging.getLogger("train")


class _Progress:
    """tqdm when installed, else a log line every ``every`` videos (default: a tenth of the
    total, at most 500)."""

    def __init__(self, total: int | None, initial: int, bar: str | bool = "auto",
                 every: int | None = None) -> None:
        if every is None:  # about ten lines per run when the total is known
            every = max(1, min(500, (total or 5000) // 10))
        self.n, self.every, self.total, self.bar = initial, every, total, None
        self.t0, self.last = time.time(), initial
        if not progress_bar_wanted(bar):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, unit="video", desc="export-graphs",
                        dynamic_ncols=True)

    def update(self, n: int, skipped: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(skipped=skipped, refresh=False)
        elif self.n - self.last >= self.every:
            self.last = self.n
            log.info("export-graphs: %d%s videos, %d skipped, %.1f videos/s", self.n,
                     f"/{self.total}" if self.total else "", skipped,
                     self.n / max(time.time() - self.t0, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def export_graphs(checkpoint: str, data: str, out: str, block: str | None = None,
                  batch_size: int = 8, num_workers: int = 0, device: str = "auto",
                  chunk: int = 256, overrides: list[str] | None = None,
                  progress: str | bool = "auto") -> dict[str, Any]:
    """Write the region graphs of DyReg ``block`` (default: the model's first) for every video
    of the labelled shards ``data`` into ``out`` (see :mod:`dyreg_pyg.export` for the layout).

    Clips are sampled as the evaluation samples them (one clip of segment centres, centre
    crop). ``progress``: a tqdm bar ``"on"``/``"off"``, or ``"auto"`` (only on a terminal;
    otherwise about ten log lines). Returns ``{"out", "videos", "written", "skipped",
    "skip_reasons", "block"}``.
    """
    (model, cfg, num_classes), sha256 = _checkpoint_digest(
        checkpoint, lambda: load_trained(checkpoint, data, 1, 1, overrides))
    name, blk = _pick_block(model, checkpoint, block)
    dev = pick_device(device)
    model.to(dev).eval()
    meta = {**_meta(checkpoint, data, name, blk, cfg, num_classes), "checkpoint_sha256": sha256}
    _check_same_checkpoint(out, meta)
    writer = RegionGraphWriter(out, meta, identity=("checkpoint", "checkpoint_sha256", "data",
                                                    "block", "num_frames"))
    if writer.complete:
        log.info("export-graphs: %s is complete (%d graphs, %d videos skipped); nothing to do",
                 out, writer.done, writer.progress.get("skipped", 0))
        writer.close()
        return _summary(writer, name, 0)
    resume_from = writer.done
    if resume_from:
        log.info("export-graphs: resuming %s after %d graphs (last video %s)", out, resume_from,
                 writer.last_key)
    loader = make_clip_loader(data, "val", ClipLoaderConfig(
        num_frames=cfg.data.num_frames, batch_size=batch_size, num_workers=num_workers,
        crop_size=cfg.data.crop_size, dataset=cfg.data.dataset, num_clips=1, num_crops=1,
        num_classes=num_classes, rank=0, world_size=1))
    bar = _Progress(_split_size(data), resume_from, progress)
    recorder = _Recorder(model, blk, cfg, dev,
                         bool(getattr(model, "needs_regions", lambda: False)()))
    try:
        written = _write_graphs(recorder, loader, writer, resume_from, chunk, bar, out, data)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    summary = _summary(writer, name, written)
    log.info("export-graphs: %d graphs in %s (%d new), %d videos skipped%s", summary["videos"],
             out, written, summary["skipped"],
             f" ({summary['skip_reasons']})" if summary["skipped"] else "")
    return summary


def _checkpoint_digest(checkpoint: str, load: Any) -> tuple[Any, str]:
    """``(load(), sha256 of the checkpoint's content)``, checking that the file did not change
    while it was hashed and loaded (a ``best.pt`` that a running fit replaces): the hash must
    describe the weights that were loaded. The whole file is hashed (about 1 GB/s, well under
    a second for a few hundred MB, small next to the export itself); size + mtime + step
    would miss a file rewritten within the clock's resolution and cost the same read."""
    from dyreg_pyg.export import file_sha256

    def stamp() -> tuple[int, int, int]:
        st = Path(checkpoint).stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    before = stamp() if Path(checkpoint).is_file() else None
    loaded = load()  # says what is wrong with a missing or unreadable checkpoint
    sha256 = file_sha256(checkpoint)
    if stamp() != before:
        raise ValueError(f"export-graphs: {checkpoint} changed while it was read (replaced by "
                         "a running fit?); run again once it is stable")
    return loaded, sha256


def _check_same_checkpoint(out: str, meta: dict[str, Any]) -> None:
    """Refuse to resume an export of ``out`` made from other weights than ``meta``'s: graphs
    of two models in one dataset would look like one export."""
    path = Path(out) / "export.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return  # the writer reports the folder as it is
    if old.get("checkpoint_sha256") == meta["checkpoint_sha256"]:
        return
    if old.get("checkpoint_sha256") is None:
        why = "it records no checkpoint hash (written by an older version)"
    else:
        why = (f"it was made from {old.get('checkpoint')} with sha256 "
               f"{old['checkpoint_sha256'][:12]}..., {meta['checkpoint']} now has "
               f"{meta['checkpoint_sha256'][:12]}... (the file was replaced or retrained)")
    raise ValueError(f"export-graphs: cannot resume {out}: {why}; resuming would mix the "
                     "graphs of two models: use another --out or delete it")


def _pick_block(model, checkpoint: str, block: str | None) -> tuple[str, Any]:
    """``(name, block)``: the DyReg block ``block`` of ``model`` (default: its first)."""
    blocks = model.dyreg_blocks()
    if not blocks:
        raise ValueError(f"export-graphs: the model of {checkpoint} has no DyReg block")
    name = block or next(iter(blocks))
    if name not in blocks:
        raise ValueError(f"--block: unknown DyReg block {name!r}; the model has {sorted(blocks)}")
    return name, blocks[name]


def _meta(checkpoint: str, data: str, name: str, blk, cfg, num_classes: int) -> dict[str, Any]:
    """What the dataset folder records about where its graphs come from and how to read them."""
    return {
        "checkpoint": str(Path(checkpoint).resolve()), "data": data, "block": name,
        "num_frames": cfg.data.num_frames, "num_nodes": blk.gnn.num_nodes,
        "node_channels": blk.gnn.node_channels, "num_classes": num_classes,
        "class_names": class_names_for(cfg, num_classes), "self_loops": blk.gnn.config.self_loops,
        "edge_types": {"spatial": 0, "temporal": 1}, "node_order": "(t, n)",
        "edge_attr_columns": list(edge_attr_columns(True)), "pos_format": "cx, cy",
        "region_format": "cx, cy, w, h normalised to the feature map (w, h: half-widths)",
        "box_format": "x0, y0, x1, y1 normalised, clipped to [0, 1]",
    }


def _split_size(data: str) -> int | None:
    """The number of videos of ``data`` from its manifest (``None``: unknown)."""
    try:
        return read_split_size(data)
    except (ValueError, OSError):
        return None


@dataclass
class _Recorder:
    """The model and DyReg block whose region graphs are recorded, on ``dev``."""

    model: Any
    blk: Any
    cfg: Any
    dev: Any
    needs_regions: bool = False

    def graphs(self, batch: dict[str, Any], start: int) -> list:
        """The region graphs of the videos ``start:`` of ``batch``."""
        sub = slice(start, None)
        video = normalise(batch["video"][sub].to(self.dev), self.cfg)
        regions = None
        if self.needs_regions:
            regions = external_regions({**batch, "video": batch["video"]})[sub].to(self.dev)
        return record_region_graphs(self.model, self.blk, video, list(batch["key"])[sub],
                                    batch["label"][sub], regions)


def _write_graphs(recorder: _Recorder, loader, writer: RegionGraphWriter, resume_from: int,
                  chunk: int, bar: _Progress | None, out: str, data: str) -> int:
    """Stream ``loader`` through ``recorder`` into ``writer`` in chunks of ``chunk`` graphs,
    skipping the first ``resume_from`` videos (already written); returns the graphs written."""
    seen, written, pending = 0, 0, []
    for batch in loader:
        keys = list(batch["key"])
        start = max(0, resume_from - seen)  # videos of this batch already written
        if resume_from and seen < resume_from <= seen + len(keys):
            if keys[resume_from - 1 - seen] != writer.last_key:
                raise ValueError(
                    f"export-graphs: cannot resume {out}: video #{resume_from} of {data} is "
                    f"{keys[resume_from - 1 - seen]!r}, the export's last is "
                    f"{writer.last_key!r} (the shards changed?); use another --out")
        seen += len(keys)
        if start >= len(keys):
            continue
        pending += recorder.graphs(batch, start)
        written += len(keys) - start
        if bar is not None:
            bar.update(len(keys) - start, loader.epoch_skips.count)
        if len(pending) >= chunk:
            writer.append(pending, loader.epoch_skips.as_dict())
            pending = []
    if seen < resume_from:
        raise ValueError(f"export-graphs: cannot resume {out}: it holds {resume_from} graphs "
                         f"but {data} yields only {seen} videos (the shards changed?)")
    writer.append(pending, loader.epoch_skips.as_dict())
    writer.write_progress(loader.epoch_skips.as_dict(), complete=True)
    return written


def _summary(writer: RegionGraphWriter, block: str, written: int) -> dict[str, Any]:
    p = writer.progress
    return {"out": str(writer.root), "videos": writer.done, "written": written,
            "skipped": p.get("skipped", 0), "skip_reasons": p.get("skip_reasons", {}),
            "block": block}


"""Region graphs of a trained video model as a PyTorch Geometric dataset.

One graph per video: the ``T * N`` nodes of a DyReg block after its ``K`` space-time
iterations, with their regions, positions, boxes and frame index, the complete graph inside
each frame (spatial edges) and an edge from node ``n`` at ``t`` to node ``n`` at ``t + 1``
(temporal edges), ``edge_attr`` (edge kind one-hot and the regions' geometry,
:mod:`dyreg_pyg.geometry`), and the video's label and id. ``python -m train export-graphs``
writes it; :class:`RegionGraphDataset` reads it.

Why :class:`~torch_geometric.data.OnDiskDataset` and not an ``InMemoryDataset``: the graphs
of a real dataset do not fit in memory (Something-Something V2: 220k videos x 16 frames x 9
nodes x 256 floats is about 32 GB), an ``InMemoryDataset`` collates everything once at the
end (nothing streams, an interrupted run leaves nothing usable), while an ``OnDiskDataset``
appends rows to an SQLite file as they come, one transaction per chunk: a crash leaves every
committed chunk intact and readable, which is what makes the export resumable. Every column
has a typed schema (tensors as raw bytes with their dtype and shape, ints, strings), so
reading the dataset never unpickles anything.

Layout of an export folder ``DIR``::

    DIR/export.json                what was exported (checkpoint, data, block, channels, ...)
    DIR/progress.json              videos written, skipped (with reasons), complete or not;
                                   replaced atomically after every committed chunk
    DIR/processed/sqlite.db        the graphs (table ``RegionGraphDataset``, row id = index)
    DIR/export.lock                held (``flock``) by the one process writing the export
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data, OnDiskDataset

from ._io import write_atomic
from .geometry import edge_attr_columns, regions_to_boxes
from .graph import build_graph_batch, with_geometry

__all__ = ["RegionGraphDataset", "RegionGraphWriter", "video_region_graphs",
           "record_region_graphs", "write_json_atomic", "EXPORT_FORMAT", "EXPORT_FORMAT_V1",
           "ExportBusyError", "file_sha256"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "dyreg-pyg region graphs v2"
"""``format`` entry of ``export.json`` (v2: ``pos`` and ``edge_attr`` stored)."""
EXPORT_FORMAT_V1 = "dyreg-pyg region graphs v1"
"""Exports before ``pos`` / ``edge_attr``: still read, both computed on load from ``region``."""


class ExportBusyError(RuntimeError):
    """Another process is writing into the same export folder."""


def file_sha256(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """The SHA-256 of a file's content, as hex (read in ``block``-byte pieces: about 1 GB/s,
    so a few hundred MB of checkpoint cost well under a second next to an export's minutes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _lock_folder(root: Path) -> Any:
    """Hold an exclusive ``flock`` on ``root/export.lock`` (released when the returned file is
    closed, or by the kernel when the process dies); :class:`ExportBusyError` when another
    process holds it. ``None`` where ``flock`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return None
    fh = open(root / "export.lock", "a+")  # noqa: SIM115 - held open while writing
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exn:
        fh.close()
        raise ExportBusyError(
            f"--out: another export is running into {root} (it holds {root / 'export.lock'}); "
            "wait for it to finish or choose another folder") from exn
    return fh


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to a temporary file in the same folder, fsync, rename: a
    reader sees the old file or the new one, never a partial one."""
    return write_atomic(path, lambda fh: json.dump(payload, fh, indent=1), binary=False)


_TENSORS_V1 = ("x", "edge_index", "edge_type", "region", "box", "frame", "region_id")
_TENSORS = (*_TENSORS_V1, "pos", "edge_attr")


def _schema(node_channels: int, fmt: str = EXPORT_FORMAT) -> dict[str, Any]:
    """The SQLite columns of an export of format ``fmt`` (v1 has no ``pos`` / ``edge_attr``)."""
    f32, i64 = torch.float32, torch.long
    geometry = {} if fmt == EXPORT_FORMAT_V1 else {
        "pos": dict(dtype=f32, size=(-1, 2)),
        "edge_attr": dict(dtype=f32, size=(-1, len(edge_attr_columns(True)))),
    }
    return {
        "x": dict(dtype=f32, size=(-1, node_channels)),
        "edge_index": dict(dtype=i64, size=(2, -1)),
        "edge_type": dict(dtype=i64, size=(-1,)),
        **geometry,
        "region": dict(dtype=f32, size=(-1, 4)),
        "box": dict(dtype=f32, size=(-1, 4)),
        "frame": dict(dtype=i64, size=(-1,)),
        "region_id": dict(dtype=i64, size=(-1,)),
        "y": int,
        "video_id": str,
    }


class RegionGraphDataset(OnDiskDataset):
    r"""The region graphs written by ``python -m train export-graphs`` (one per video).

    Each item is a :class:`~torch_geometric.data.Data` with

    - ``x [T*N, C]``: node states after the ``K`` graph iterations (node order ``(t, n)``),
    - ``edge_index [2, E]``: spatial edges (inside a frame, self-loops included when the
      block uses them), then temporal ones (node ``n`` at ``t`` -> at ``t + 1``),
    - ``edge_attr [E, 8]``: columns :attr:`edge_attr_columns` = ``spatial, temporal`` (the
      edge kind, one-hot), then ``dx, dy, distance, log_w, log_h, iou`` (the two regions'
      geometry, :mod:`dyreg_pyg.geometry`),
    - ``pos [T*N, 2]``: the regions' centres ``(cx, cy)`` (for ``T.Distance``,
      ``T.Cartesian``, point-cloud layers),
    - ``region [T*N, 4]``: ``(cx, cy, w, h)`` normalised to the feature map (``w, h``: the
      kernel's half-widths), ``box [T*N, 4]``: ``(x0, y0, x1, y1)`` clipped to ``[0, 1]``,
    - ``frame [T*N]`` (``t``), ``region_id [T*N]`` (``n``),
    - ``y [1]``: the video's label, ``video_id``: its sample key,
    - ``edge_type [E]`` (0 spatial, 1 temporal), kept for code written for v1 exports: it
      repeats ``edge_attr[:, 1]``, and transforms that add edges (``T.AddSelfLoops``) do not
      extend it - read the kind from ``edge_attr`` or use :func:`~dyreg_pyg.graph.to_hetero`.

    PyG's transforms work on the items: ``T.AddSelfLoops(attr="edge_attr",
    fill_value=self_loop_edge_attr(True))`` (:func:`~dyreg_pyg.geometry.self_loop_edge_attr`:
    the row a self-loop has), ``T.ToUndirected()`` (it copies an edge's attributes to its
    reverse; :func:`~dyreg_pyg.graph.with_geometry` recomputes them), ``T.Distance()``,
    ``T.Cartesian()``; :func:`~dyreg_pyg.graph.to_hetero` gives a ``HeteroData`` with the
    spatial and temporal edges as two relations.

    Exports written before ``pos`` / ``edge_attr`` (format v1) open as well: both are
    computed on load from the stored regions (the same functions as the export's).

    Batches from :class:`torch_geometric.loader.DataLoader` stack ``y`` to ``[B]`` and keep
    ``frame`` / ``region_id`` as they are. Open the dataset in the main process (an SQLite
    connection does not survive a fork: use ``num_workers=0``, or open it inside each worker).

    Args:
        root: the export folder (``--out`` of ``export-graphs``).
        transform: applied to every item on access.
        create: create an empty dataset (the exporter); reading needs an existing export.
        node_channels: ``C`` when creating; read from ``export.json`` otherwise.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 create: bool = False, node_channels: int | None = None) -> None:
        root = Path(root)
        meta_path = root / "export.json"
        fmt = EXPORT_FORMAT
        if node_channels is None:
            if not meta_path.is_file():
                raise FileNotFoundError(
                    f"RegionGraphDataset: {root} holds no region-graph export (no export.json); "
                    "write one with `python -m train export-graphs`")
            meta = json.loads(meta_path.read_text())
            fmt = meta.get("format")
            if fmt not in (EXPORT_FORMAT, EXPORT_FORMAT_V1):
                raise ValueError(f"RegionGraphDataset: {meta_path} has format {fmt!r}, expected "
                                 f"{EXPORT_FORMAT!r} (or {EXPORT_FORMAT_V1!r}); export it again "
                                 "with `python -m train export-graphs`")
            node_channels = int(meta["node_channels"])
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.format = fmt
        if not create and not (root / "processed" / "sqlite.db").is_file():
            raise FileNotFoundError(f"RegionGraphDataset: {root / 'processed' / 'sqlite.db'} "
                                    "does not exist (an export that never committed a chunk?)")
        if fmt == EXPORT_FORMAT_V1:
            log.info("RegionGraphDataset: %s is a v1 export (no pos / edge_attr stored); they "
                     "are computed on load from the regions", root)
        super().__init__(str(root), transform, backend="sqlite",
                         schema=_schema(node_channels, fmt), log=False)

    @property
    def num_classes(self) -> int:  # the model's classes, not only those present
        n = self.meta.get("num_classes")
        return int(n) if n is not None else super().num_classes

    @property
    def edge_attr_columns(self) -> tuple[str, ...]:
        """The names of ``edge_attr``'s columns."""
        return edge_attr_columns(True)

    def serialize(self, data: Data) -> dict[str, Any]:
        keys = _TENSORS_V1 if self.format == EXPORT_FORMAT_V1 else _TENSORS
        row = {k: data[k].detach().cpu().contiguous() for k in keys}
        for k in ("x", "region", "box", "pos", "edge_attr"):
            if k in row:
                row[k] = row[k].float()
        row["y"] = int(data.y.view(-1)[0])
        row["video_id"] = str(data.video_id)
        return row

    def deserialize(self, row: dict[str, Any]) -> Data:
        out = {k: v.clone() if isinstance(v, Tensor) else v for k, v in row.items()}
        out["y"] = torch.tensor([row["y"]], dtype=torch.long)
        data = Data(**out)
        if self.format == EXPORT_FORMAT_V1:
            data = with_geometry(data, kind=True)
        return data


def video_region_graphs(nodes: Tensor, regions: Tensor, keys: Sequence[str], labels: Tensor,
                        self_loops: bool = True) -> list[Data]:
    """One space-time :class:`Data` per video from the nodes of a DyReg block.

    Args:
        nodes: ``[B, T, N, C]`` node states after the ``K`` iterations.
        regions: ``[B, T, N, 4]`` ``(cx, cy, w, h)``.
        keys: ``B`` video ids; labels: ``[B]``.
        self_loops: the block's frame graphs have ``i -> i`` edges.
    """
    b, t, n, _ = nodes.shape
    if regions.shape != (b, t, n, 4):
        raise ValueError(f"regions: expected {(b, t, n, 4)} to match nodes, got "
                         f"{tuple(regions.shape)}")
    if len(keys) != b or labels.numel() != b:
        raise ValueError(f"keys/labels: expected {b} of each, got {len(keys)} and "
                         f"{labels.numel()}")
    nodes, regions = nodes.detach().float().cpu(), regions.detach().float().cpu()
    boxes = regions_to_boxes(regions)
    out = []
    for i in range(b):
        g = build_graph_batch(nodes[i:i + 1], regions[i:i + 1], self_loops, temporal_edges=True)
        out.append(Data(
            x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, edge_type=g.edge_type,
            pos=g.pos, region=g.region, box=boxes[i].reshape(t * n, 4), frame=g.frame,
            region_id=torch.arange(n).repeat(t), y=labels[i].view(1).long().cpu(),
            video_id=str(keys[i]),
        ))
    return out


@torch.no_grad()
def record_region_graphs(model: nn.Module, block: nn.Module, clip: Tensor, keys: Sequence[str],
                         labels: Tensor, regions: Tensor | None = None) -> list[Data]:
    """Run ``model`` on the normalised ``clip [B, T, C, H, W]`` and return the region graphs
    of its DyReg ``block`` (a :class:`~dyreg_pyg.DyRegBlock`), one per video.

    The node states come from the block's recorded details (``graph.x``); for the ``dense``
    backend, which builds no PyG graph, they are recomputed from the block's input with
    :meth:`~dyreg_pyg.DyRegGNN.node_states` (same weights and input, so the same nodes).
    ``regions``: the external regions of a ``regions="external"`` model.
    """
    captured: dict[str, Any] = {}

    def grab(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["x"] = args[0]
        captured["regions"] = args[1] if len(args) > 1 else kwargs.get("regions")

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    block.record = True
    try:
        if regions is None:
            model(clip)
        else:
            model(clip, regions=regions)
        details = block.last
        if details is None:
            raise RuntimeError("record_region_graphs: the block recorded nothing (is it part "
                               "of the model?)")
        b, t, n = details.regions.shape[:3]
        if details.graph is not None:
            nodes = details.graph.x.view(b, t, n, -1)
        else:
            nodes = block.gnn.node_states(captured["x"], captured["regions"])
        self_loops = bool(block.gnn.config.self_loops)
        return video_region_graphs(nodes, details.regions, keys, labels, self_loops)
    finally:
        handle.remove()
        block.record = False
        block.last = None


class RegionGraphWriter:
    """Append region graphs to an export folder, resumably.

    Opening a folder that already holds an export of the same ``meta`` (checked on the keys
    ``identity``) continues it: :attr:`done` graphs are there, :attr:`last_key` is the video id
    of the last one. Each :meth:`append` commits one SQLite transaction and then replaces
    ``progress.json`` atomically.

    Args:
        root: export folder.
        meta: what is exported (written to ``export.json``; must hold ``node_channels``).
        identity: the ``meta`` keys that must match to continue an existing export.
    """

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any],
                 identity: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.root)
        try:
            self._open(meta, identity)
        except BaseException:
            self._release()
            raise

    def _open(self, meta: dict[str, Any], identity: Sequence[str]) -> None:
        meta = {"format": EXPORT_FORMAT, **meta}
        meta_path = self.root / "export.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if old.get("format") == EXPORT_FORMAT_V1:
                raise ValueError(
                    f"--out: {self.root} holds an export of an older format "
                    f"({EXPORT_FORMAT_V1!r}, without pos / edge_attr), which this version does "
                    "not extend; it still reads as it is - export again into another folder "
                    "(or delete it) for the new format")
            diff = [k for k in ("format", "node_channels", *identity) if old.get(k) != meta.get(k)]
            if diff:
                raise ValueError(
                    f"--out: {self.root} already holds an export of other settings (differs "
                    f"in {', '.join(f'{k}: {old.get(k)!r} != {meta.get(k)!r}' for k in diff)}); "
                    "choose another folder or delete it")
        else:
            write_json_atomic(meta_path, meta)
        self.meta = meta
        self.dataset = RegionGraphDataset(self.root, create=True,
                                          node_channels=int(meta["node_channels"]))
        self.done = len(self.dataset)
        self.last_key = self.dataset.get(self.done - 1).video_id if self.done else None
        progress = self.root / "progress.json"
        self.progress = json.loads(progress.read_text()) if progress.is_file() else {}

    @property
    def complete(self) -> bool:
        """A previous run finished this export."""
        return bool(self.progress.get("complete")) and self.progress.get("videos") == self.done

    def append(self, graphs: Sequence[Data], skipped: dict[str, Any]) -> None:
        """Commit ``graphs`` (one transaction), then record the progress."""
        if graphs:
            try:
                self.dataset.extend(list(graphs))
            except sqlite3.IntegrityError as exn:  # rows of these indices exist: not ours
                self.dataset.db.connection.rollback()
                raise ExportBusyError(
                    f"--out: another export is writing into {self.root}: graph #{self.done} "
                    "was committed by another process since this one opened the folder; let "
                    "one export finish (then run again to check it) or choose another "
                    "folder") from exn
            self.done += len(graphs)
            self.last_key = str(graphs[-1].video_id)
        self.write_progress(skipped, complete=False)

    def write_progress(self, skipped: dict[str, Any], complete: bool) -> None:
        self.progress = {"videos": self.done, "skipped": skipped.get("count", 0),
                         "skip_reasons": skipped.get("reasons", {}),
                         "skip_examples": skipped.get("examples", [])[:20],
                         "complete": complete}
        write_json_atomic(self.root / "progress.json", self.progress)

    def close(self) -> None:
        try:
            self.dataset.close()
        finally:
            self._release()

    def _release(self) -> None:
        if getattr(self, "_lock", None) is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None


"""Something-Something V1 / V2 annotation readers, label maps, left/right flip pairs and the
converter to WebDataset shards (used by ``datasets/something_something.py``).

Official release layouts:

* **V2**: videos ``<video_dir>/<id>.webm``; ``something-something-v2-labels.json`` maps the
  template text (brackets removed) to the class index as a string;
  ``something-something-v2-{train,validation,test}.json`` are lists of ``{"id", "label",
  "template", "placeholders"}`` (test: ``{"id"}`` only), where ``template`` contains
  ``[something]`` - removing the brackets gives the key of the labels file.
* **V1**: JPEG frame folders ``<frames_dir>/<id>/00001.jpg ...``; ``something-something-v1-
  labels.csv`` lists the class texts, one per line (the line number is the class index);
  ``something-something-v1-{train,validation}.csv`` have ``id;class text`` lines (test:
  ``id`` only).

Each output sample: ``<id>.cls`` (class index as text; absent for the test split),
``<id>.json`` (``id``, ``label_text``, ``template``, ``class_name``, ``placeholders``,
``num_frames``, ``fps``, ``frame_size``, optional ``boxes`` / ``box_categories`` per frame from
the Something-Else annotations) and either ``<id>.webm`` (``store="video"``: the original bytes)
or ``<id>.00000.jpg ...`` (``store="frames"``: JPEG frames, short side reduced to
``short_side``; frames already small enough keep their original bytes).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing as mp
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .decode import CorruptSample
from .shards import KEY_RE, ShardWriter, brace_pattern, write_manifest

log = logging.getLogger(__name__)

__all__ = [
    "VideoRecord", "template_to_class_name", "read_ssv2_labels", "read_ssv2_split",
    "read_ssv1_labels", "read_ssv1_split", "flip_pairs_from_names", "read_something_else_boxes",
    "convert_something", "SSV2_FILES", "SSV1_FILES",
]

SSV2_FILES = {
    "labels": "something-something-v2-labels.json",
    "train": "something-something-v2-train.json",
    "validation": "something-something-v2-validation.json",
    "test": "something-something-v2-test.json",
}
SSV1_FILES = {
    "labels": "something-something-v1-labels.csv",
    "train": "something-something-v1-train.csv",
    "validation": "something-something-v1-validation.csv",
    "test": "something-something-v1-test.csv",
}
SSV1_FPS = 12.0
_SPLITS = ("train", "validation", "test")


@dataclass
class VideoRecord:
    """One annotated video. ``label`` is ``None`` for unlabelled (test) videos."""

    id: str
    label: int | None
    class_name: str | None = None
    label_text: str | None = None
    template: str | None = None
    placeholders: list[str] = field(default_factory=list)


def template_to_class_name(template: str) -> str:
    """``"Putting [something] on [something]"`` -> ``"Putting something on something"``
    (how the official V2 release matches the ``template`` of a video to its labels file)."""
    return template.replace("[", "").replace("]", "").strip()


def read_ssv2_labels(path: str | os.PathLike) -> dict[str, int]:
    """Class name -> index from ``something-something-v2-labels.json``."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"labels: expected a JSON object name -> index in {path}")
    out = {str(k).strip(): int(v) for k, v in raw.items()}
    if sorted(out.values()) != list(range(len(out))):
        raise ValueError(f"labels: indices in {path} are not 0..{len(out) - 1}")
    return out


def read_ssv2_split(path: str | os.PathLike, labels: dict[str, int]
                    ) -> tuple[list[VideoRecord], list[tuple[str, str]]]:
    """Records of a V2 split file, and ``(id, reason)`` for entries that cannot be used."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, list):
        raise ValueError(f"split file: expected a JSON list in {path}")
    records, skipped = [], []
    for entry in raw:
        vid = str(entry.get("id", "")) if isinstance(entry, dict) else ""
        if not KEY_RE.match(vid):
            skipped.append((vid or "?", "bad_id"))
            continue
        template = entry.get("template")
        if template is None:  # test split: no label
            records.append(VideoRecord(vid, None))
            continue
        name = template_to_class_name(str(template))
        if name not in labels:
            skipped.append((vid, f"label_not_in_class_map: {name!r}"))
            continue
        records.append(VideoRecord(vid, labels[name], name, entry.get("label"), str(template),
                                   list(entry.get("placeholders") or [])))
    return records, skipped


def read_ssv1_labels(path: str | os.PathLike) -> dict[str, int]:
    """Class name -> index (line number) from ``something-something-v1-labels.csv``."""
    names = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"labels: no class in {path}")
    if len(set(names)) != len(names):
        raise ValueError(f"labels: duplicated class names in {path}")
    return {n: i for i, n in enumerate(names)}


def read_ssv1_split(path: str | os.PathLike, labels: dict[str, int]
                    ) -> tuple[list[VideoRecord], list[tuple[str, str]]]:
    """Records of a V1 ``id;class text`` CSV (``id`` alone: unlabelled)."""
    records, skipped = [], []
    with open(path, newline="") as f:
        for row in csv.reader(f, delimiter=";"):
            if not row or not row[0].strip():
                continue
            vid = row[0].strip()
            if not KEY_RE.match(vid):
                skipped.append((vid, "bad_id"))
                continue
            if len(row) < 2:
                records.append(VideoRecord(vid, None))
                continue
            name = ";".join(row[1:]).strip()
            if name not in labels:
                skipped.append((vid, f"label_not_in_class_map: {name!r}"))
                continue
            records.append(VideoRecord(vid, labels[name], name, name, name))
    return records, skipped


def flip_pairs_from_names(labels: dict[str, int]) -> dict[int, int]:
    """Classes that a horizontal flip turns into each other: the class whose name has
    "left" and "right" swapped ("Pushing something from left to right" <-> "... right to
    left", "Turning the camera left ..." <-> "... right ..."). Symmetric mapping."""
    def swap(name: str) -> str:
        return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left",
                      name)

    pairs = {}
    for name, idx in labels.items():
        other = swap(name)
        if other != name and other in labels:
            pairs[idx] = labels[other]
    return dict(sorted(pairs.items()))


def read_something_else_boxes(paths: list[str | os.PathLike], ids: set[str] | None = None
                              ) -> dict[str, dict[int, list[tuple[list[float], str]]]]:
    """Per-frame object boxes from Something-Else ``bounding_box_annotations.json`` file(s):
    ``{video id: {frame index (0-based): [([x0, y0, x1, y1], category), ...]}}``."""
    out: dict[str, dict[int, list[tuple[list[float], str]]]] = {}
    for path in paths:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"boxes: expected a JSON object video id -> frames in {path}")
        for vid, frames in raw.items():
            if ids is not None and vid not in ids:
                continue
            per = out.setdefault(str(vid), {})
            for k, fr in enumerate(frames or []):
                m = re.search(r"(\d+)\.\w+$", str(fr.get("name", "")))
                fi = int(m.group(1)) - 1 if m else k
                for lab in fr.get("labels") or []:
                    b = lab.get("box2d") or {}
                    try:
                        box = [float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"])]
                    except (KeyError, TypeError, ValueError):
                        continue
                    cat = str(lab.get("standard_category", lab.get("category", "")))
                    per.setdefault(fi, []).append((box, cat))
    return out


# --------------------------------------------------------------------------- conversion


def _encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _shrink(img: Image.Image, short: int | None) -> tuple[Image.Image, float]:
    w, h = img.size
    if short is None or min(w, h) <= short:
        return img, 1.0
    s = short / min(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR), s


def _sample_from_video(path: Path, store: str, short: int | None, quality: int
                       ) -> tuple[dict[str, bytes], dict[str, Any], float]:
    import av

    data = path.read_bytes()
    members: dict[str, bytes] = {}
    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise CorruptSample("corrupt_video", "no video stream")
            st = c.streams.video[0]
            fps = float(st.average_rate) if st.average_rate else 0.0
            n, size, scale = 0, None, 1.0
            for frame in c.decode(st):
                if store == "frames":
                    img, scale = _shrink(frame.to_image(), short)
                    members[f"{n:05d}.jpg"] = _encode_jpeg(np.asarray(img.convert("RGB")),
                                                           quality)
                    size = list(img.size)
                else:
                    size = [frame.width, frame.height]
                n += 1
    except CorruptSample:
        raise
    except Exception as exn:
        raise CorruptSample("corrupt_video", repr(exn)) from exn
    if n == 0:
        raise CorruptSample("corrupt_video", "no decodable frame")
    if store == "video":
        members[path.suffix.lstrip(".").lower() or "webm"] = data
    return members, {"num_frames": n, "fps": fps, "frame_size": size}, scale


def _sample_from_frames(folder: Path, short: int | None, quality: int, fps: float
                        ) -> tuple[dict[str, bytes], dict[str, Any], float]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise CorruptSample("no_frames", f"no JPEG in {folder}")
    members: dict[str, bytes] = {}
    size, scale = None, 1.0
    for n, p in enumerate(files):
        data = p.read_bytes()
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exn:
            raise CorruptSample("corrupt_jpeg", f"{p.name}: {exn!r}") from exn
        small, scale = _shrink(img, short)
        if small is img and img.format == "JPEG":
            members[f"{n:05d}.jpg"] = data  # already small enough: keep the original bytes
        else:
            members[f"{n:05d}.jpg"] = _encode_jpeg(np.asarray(small.convert("RGB")), quality)
        size = list(small.size)
    return members, {"num_frames": len(files), "fps": fps, "frame_size": size}, scale


def _convert_one(job: dict[str, Any]) -> tuple[str, dict[str, bytes] | None, str]:
    """Build the members of one sample; returns ``(id, members or None, skip reason)``."""
    rec: VideoRecord = job["record"]
    try:
        if job["version"] == 2:
            path = Path(job["video_dir"]) / f"{rec.id}.webm"
            if not path.exists():
                alt = sorted(Path(job["video_dir"]).glob(f"{rec.id}.*"))
                if not alt:
                    return rec.id, None, "missing_video"
                path = alt[0]
            members, info, scale = _sample_from_video(path, job["store"], job["short_side"],
                                                      job["quality"])
        else:
            folder = Path(job["frames_dir"]) / rec.id
            if not folder.is_dir():
                return rec.id, None, "missing_frames"
            members, info, scale = _sample_from_frames(folder, job["short_side"], job["quality"],
                                                       job["fps"])
    except CorruptSample as exn:
        return rec.id, None, f"{exn.reason}: {exn.detail[:200]}"
    meta: dict[str, Any] = {"id": rec.id, "label": rec.label, "class_name": rec.class_name,
                            "label_text": rec.label_text, "template": rec.template,
                            "placeholders": rec.placeholders, **info}
    boxes = job.get("boxes")
    if boxes:
        n = info["num_frames"]
        meta["boxes"] = [[[round(v * scale, 2) for v in b] for b, _ in boxes.get(t, [])]
                         for t in range(n)]
        meta["box_categories"] = [[c for _, c in boxes.get(t, [])] for t in range(n)]
    if rec.label is not None:
        members["cls"] = str(rec.label).encode()
    members["json"] = json.dumps(meta, separators=(",", ":")).encode()
    return rec.id, members, ""


def convert_something(version: int, annotations: str | os.PathLike, out_dir: str | os.PathLike,
                      split: str, *, videos: str | os.PathLike | None = None,
                      store: str | None = None, maxcount: int = 500, maxsize: int = 1 << 30,
                      short_side: int | None = 256, quality: int = 90,
                      boxes: list[str | os.PathLike] | None = None, fps: float = SSV1_FPS,
                      limit: int | None = None, workers: int = 1) -> dict[str, Any]:
    """Convert one split of Something-Something V1 or V2 into WebDataset shards.

    Writes ``<out_dir>/<split>-%06d.tar`` and ``<out_dir>/<split>-manifest.json`` (shards with
    counts, ``num_samples``, ``num_classes``, ``class_names``, ``flip_pairs``, ``class_counts``
    and ``skipped``: count, reasons and the first 100 ``(id, reason)``). Unusable videos
    (missing, corrupt, unknown label) are skipped, counted and logged; nothing else stops.

    Args:
        version: 1 or 2.
        annotations: Folder with the official label/split files.
        out_dir: Output folder.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        videos: V2: folder of ``<id>.webm``; V1: folder of ``<id>/`` JPEG folders.
        store: ``"video"`` (V2 only: original encoded bytes) or ``"frames"`` (JPEG frames);
            default ``"video"`` for V2, ``"frames"`` for V1.
        maxcount, maxsize: Shard limits (samples, bytes).
        short_side: ``store="frames"``: frames with a larger short side are resized to it
            (``None``: never).
        quality: JPEG quality of re-encoded frames.
        boxes: Something-Else ``bounding_box_annotations*.json`` files (optional).
        fps: Frame rate recorded for V1 (its frames were extracted at 12 fps).
        limit: Convert only the first ``limit`` videos of the split (quick tests).
        workers: Processes decoding/encoding in parallel (the output does not depend on it).
    """
    store = _check_conversion(version, split, store, workers, annotations, videos)
    labels, records, skipped = _read_annotations(version, Path(annotations), split)
    if limit is not None:
        records = records[:limit]
    box_map = read_something_else_boxes(list(boxes), {r.id for r in records}) if boxes else {}
    jobs = [{"record": r, "version": version, "video_dir": str(videos), "frames_dir": str(videos),
             "store": store, "short_side": short_side, "quality": quality, "fps": fps,
             "boxes": box_map.get(r.id)} for r in records]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{split}-[0-9]*.tar"):
        old.unlink()
    t0 = time.time()
    writer = ShardWriter(out, split, maxcount=maxcount, maxsize=maxsize)
    with writer:
        counts = _write_jobs(writer, jobs, workers, skipped)
    shards = writer.shards
    reasons = Counter(r.split(":")[0] for _, r in skipped)
    names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    manifest = {
        "dataset": f"something-something-v{version}",
        "split": split,
        "store": store,
        "num_samples": sum(s["count"] for s in shards),
        "num_classes": len(labels),
        "class_names": names,
        "flip_pairs": {str(k): v for k, v in flip_pairs_from_names(labels).items()},
        "class_counts": [counts.get(i, 0) for i in range(len(labels))],
        "shards": shards,
        "pattern": brace_pattern(out, [s["name"] for s in shards]) if shards else None,
        "skipped": {"count": len(skipped), "reasons": dict(reasons),
                    "items": [list(x) for x in skipped[:100]]},
    }
    write_manifest(out / f"{split}-manifest.json", manifest)
    log.info("%s v%d %s: %d samples in %d shards, %d skipped %s (%.1f s)", out, version, split,
             manifest["num_samples"], len(shards), len(skipped), dict(reasons), time.time() - t0)
    return manifest


def _check_conversion(version: int, split: str, store: str | None, workers: int,
                      annotations: str | os.PathLike, videos: str | os.PathLike | None) -> str:
    """:func:`convert_something`'s checks of its arguments; returns the ``store`` to use."""
    if version not in (1, 2):
        raise ValueError(f"version: expected 1 or 2, got {version!r}")
    if split not in _SPLITS:
        raise ValueError(f"split: expected one of {_SPLITS}, got {split!r}")
    if store is None:
        store = "video" if version == 2 else "frames"
    if store not in ("video", "frames"):
        raise ValueError(f"store: expected 'video' or 'frames', got {store!r}")
    if version == 1 and store == "video":
        raise ValueError("store: V1 is released as JPEG frames, use store='frames'")
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    ann = Path(annotations)
    files = SSV2_FILES if version == 2 else SSV1_FILES
    for need in ("labels", split):
        if not (ann / files[need]).exists():
            raise ValueError(f"annotations: {files[need]} not found in {ann}")
    if videos is None or not Path(videos).is_dir():
        what = "<id>.webm videos" if version == 2 else "<id>/ frame folders"
        raise ValueError(f"videos: expected the folder of {what}, got {videos!r}")
    return store


def _read_annotations(version: int, ann: Path, split: str
                      ) -> tuple[dict[str, int], list[VideoRecord], list[tuple[str, str]]]:
    """``(labels, records, skipped)`` of ``split`` from the official files in ``ann``."""
    files = SSV2_FILES if version == 2 else SSV1_FILES
    if version == 2:
        labels = read_ssv2_labels(ann / files["labels"])
        records, skipped = read_ssv2_split(ann / files[split], labels)
    else:
        labels = read_ssv1_labels(ann / files["labels"])
        records, skipped = read_ssv1_split(ann / files[split], labels)
    return labels, records, skipped


def _write_jobs(writer: ShardWriter, jobs: list[dict[str, Any]], workers: int,
                skipped: list[tuple[str, str]]) -> Counter:
    """Convert ``jobs`` (``workers`` processes) into ``writer``, in order; the videos that
    cannot be used are logged and appended to ``skipped``. Returns the samples per label."""
    counts: Counter = Counter()
    if workers == 1:
        results = map(_convert_one, jobs)
        pool = None
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers)
        results = pool.imap(_convert_one, jobs, chunksize=4)
    try:
        for (vid, members, reason), job in zip(results, jobs):
            if members is None:
                log.warning("skipping video %s: %s", vid, reason)
                skipped.append((vid, reason))
                continue
            writer.write(vid, members)
            if job["record"].label is not None:
                counts[job["record"].label] += 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return counts

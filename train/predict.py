"""``python -m train predict`` and ``export-model``: a trained model on video files, and the
model for inference without the training code (``torch.export`` + safetensors)."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from dyreg_pyg._checks import check_finite_logits, not_a_file
from dyreg_pyg.data import ClipLoaderConfig, load_manifest, make_clip_loader, normalize_clip
from dyreg_pyg.data.remote import DEFAULT_READ_TIMEOUT
from dyreg_pyg.inference import (
    MAX_SIDE,
    ExportError,
    export_program,
    load_weights,
    match_channels,
    match_size,
    pack_videos,
    preprocessing_spec,
    save_weights,
)

__all__ = ["predict", "write_predictions", "export_model", "load_predictor", "Predictor",
           "class_names_for", "pick_device"]

log = logging.getLogger("train")


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def class_names_for(cfg, num_classes: int, checkpoint: dict[str, Any] | None = None
                    ) -> list[str] | None:
    """Class names of a trained run: the checkpoint's own ``class_names`` if it has them, else
    those of the data manifest next to its validation or training shards (``cfg.data.val``,
    ``cfg.data.train``, local or HTTP(S), each read bounded by ``cfg.data.read_timeout``:
    :func:`~dyreg_pyg.data.load_manifest`); ``None``
    when there is none (or it lists another number of classes). A corrupt manifest raises
    ``ValueError`` naming it; one that cannot be read (no permission, a server that cannot be
    reached: ``OSError``) is logged and skipped (names are a convenience: predictions then
    show class indices)."""
    names = (checkpoint or {}).get("class_names")
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    for pattern in (cfg.data.val, cfg.data.train):
        try:
            m = load_manifest(pattern, getattr(cfg.data, "read_timeout", DEFAULT_READ_TIMEOUT))
        except OSError as exn:
            log.warning("no class names from the manifest next to %r: %s", pattern, exn)
            continue
        names = (m or {}).get("class_names")
        if names and len(names) == num_classes:
            return [str(n) for n in names]
    return None


@dataclass
class Predictor:
    """A video model with what its clips need: ``num_frames``, ``crop_size`` (``None``: the
    stored frames), ``dataset`` (resize defaults), ``mean`` / ``std``, and class names."""

    model: torch.nn.Module
    num_frames: int
    crop_size: int | None
    dataset: str
    mean: list[float]
    std: list[float]
    num_classes: int
    class_names: list[str] | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def label(self, index: int) -> str:
        return self.class_names[index] if self.class_names else str(index)


def load_predictor(checkpoint: str | Path, classes: str | None = None) -> Predictor:
    """A trained run's checkpoint (``.pt``) or a :func:`export_model` weights file
    (``.safetensors``: no training config needed) as a :class:`Predictor` on the CPU.

    Class names: ``classes`` (a manifest JSON with ``class_names``, or a text file with one
    name per line) if given, else the checkpoint's (see :func:`class_names_for`); without any,
    predictions show class indices and a warning says so."""
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        model, info = load_weights(path)
        p = Predictor(model, int(info["num_frames"]), info.get("crop_size"),
                      info.get("dataset", "generic"), list(info["mean"]), list(info["std"]),
                      int(info["num_classes"]), info.get("class_names"), str(path), info)
    else:
        from .checkpoint import checkpoint_config, load_checkpoint, load_model_state
        from .config import config_from_dict
        from .loop import build_model

        ck = load_checkpoint(path)
        if "config" not in ck or "num_classes" not in ck:
            raise ValueError(f"checkpoint: {path} has no training config (not written by "
                             "`python -m train fit`?)")
        cfg = config_from_dict(checkpoint_config(ck))
        num_classes = int(ck["num_classes"])
        model = build_model(cfg, num_classes)
        load_model_state(model, ck["model"], str(path))
        d = cfg.data
        p = Predictor(model.eval(), d.num_frames, d.crop_size, d.dataset, list(d.mean),
                      list(d.std), num_classes, class_names_for(cfg, num_classes, ck), str(path),
                      {"preset": cfg.model.preset, "overrides": dict(cfg.model.overrides)})
    if classes:
        p.class_names = _read_classes(classes, p.num_classes)
    if not p.class_names:
        log.warning("%s: no class names (no data manifest with 'class_names' next to the "
                    "run's shards, and none in the checkpoint): predictions show class indices; "
                    "--classes FILE names them", path)
    return p


def _read_classes(path: str, num_classes: int) -> list[str]:
    what = not_a_file(path)  # reading a fifo would wait for a writer forever
    if what:
        raise ValueError(f"--classes: {path} {what}; expected a manifest JSON or a text file "
                         "with one class name per line")
    text = Path(path).read_text()
    try:
        names = json.loads(text)
        names = names.get("class_names") if isinstance(names, dict) else names
    except ValueError:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or len(names) != num_classes:
        raise ValueError(f"--classes: {path} lists {len(names) if isinstance(names, list) else 0}"
                         f" class names, the model has {num_classes} classes")
    return [str(n) for n in names]


@torch.no_grad()
def write_predictions(result: dict[str, Any], fmt: str, stream: TextIO) -> None:
    """:func:`predict`'s result as ``fmt`` ``"json"`` (one document: ``predictions`` with
    ``top`` as ``{"rank", "class", "name", "probability"}`` objects, and ``skipped``) or
    ``"csv"`` (a header, then ``video,rank,class,name,probability`` rows), for scripts."""
    if fmt == "json":
        doc = {"predictions": [{**p, "top": [{"rank": r, "class": c, "name": n, "probability": q}
                                             for r, (c, n, q) in enumerate(p["top"], 1)]}
                               for p in result["predictions"]],
               "skipped": result["skipped"]}
        json.dump(doc, stream, indent=1)
        stream.write("\n")
    elif fmt == "csv":
        out = csv.writer(stream, lineterminator="\n")
        out.writerow(["video", "rank", "class", "name", "probability"])
        for p in result["predictions"]:
            for r, (c, n, q) in enumerate(p["top"], 1):
                out.writerow([p["video"], r, c, n, f"{q:.6f}"])
    else:
        raise ValueError(f"format: expected 'json' or 'csv', got {fmt!r}")


def predict(checkpoint: str | Path, videos: list[str], top_k: int = 5, num_clips: int = 1,
            num_crops: int = 1, regions: str | None = None, block: str | None = None,
            classes: str | None = None, device: str = "auto", batch_size: int = 4,
            max_side: int | None = MAX_SIDE) -> dict[str, Any]:
    """Top-k classes of each video (files or frame folders), clips sampled as the evaluation
    samples them (segment-centre frames; centre crop, or ``num_clips x num_crops`` views whose
    softmax scores are averaged).

    ``max_side``: frames of a frame folder whose longer side is larger are decoded at a
    reduced size and shrunk to it (aspect kept), so that huge pictures (8000 x 6000 JPEGs)
    do not fill the memory (:func:`~dyreg_pyg.inference.pack_videos`); ``None`` or 0: no
    limit. The clip's own resize and crop follow as usual.

    ``regions``: write a GIF of the predicted regions (DyReg ``block``, default the first) on
    the frames the model saw: that path for one video, ``<stem>_<key><suffix>`` beside it for
    several.

    Returns:
        ``{"predictions": [{"video", "top": [(class index, name, probability), ...],
        "regions_gif"}], "skipped": [{"video", "reason", "detail"}]}``.

    Raises:
        ValueError: a path that does not exist, is not a regular file or folder (a fifo:
            named as such) or is not a video; every video failed to decode (the message
            names each); a checkpoint with NaN or inf weights, or a model whose logits are
            NaN or inf (``NonFiniteError``: nothing is reported).
    """
    pred = load_predictor(checkpoint, classes)
    dev = pick_device(device)
    model = pred.model.to(dev).eval()
    blk = _regions_block(model, checkpoint, regions, block)
    if getattr(model, "needs_regions", lambda: False)():
        raise ValueError(f"predict: the model of {checkpoint} takes its regions from the caller "
                         "(regions='external', ground-truth boxes); it cannot run on a video file")
    k = min(top_k, pred.num_classes)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dyreg-predict-") as tmp:
        shard, keys = pack_videos(videos, tmp, max_side)
        loader = make_clip_loader(shard, "test", ClipLoaderConfig(
            num_frames=pred.num_frames,  # without a crop, videos of different sizes: 1 a batch
            batch_size=batch_size if pred.crop_size else 1,
            num_workers=0, crop_size=pred.crop_size, dataset=pred.dataset, num_clips=num_clips,
            num_crops=num_crops, num_classes=pred.num_classes, rank=0, world_size=1))
        for batch in loader:
            probs, views, recorded = _batch_probs(model, pred, batch, dev, blk)
            results += _batch_entries(batch, probs, views, recorded, pred, keys, k, regions)
        skipped = _skipped(loader, keys, results)
    return _report(results, skipped, keys, pred)


def _regions_block(model: torch.nn.Module, checkpoint: str | Path, regions: str | None,
                   block: str | None) -> torch.nn.Module | None:
    """The DyReg block whose regions ``--regions`` draws (``None`` without ``--regions``)."""
    if not regions:
        return None
    blocks = model.dyreg_blocks()
    if not blocks:
        raise ValueError(f"--regions: the model of {checkpoint} has no DyReg block")
    name = block or next(iter(blocks))
    if name not in blocks:
        raise ValueError(f"--block: unknown DyReg block {name!r}; the model has "
                         f"{sorted(blocks)}")
    return blocks[name]


def _batch_probs(model: torch.nn.Module, pred: Predictor, batch: dict[str, Any],
                 dev: torch.device, blk: torch.nn.Module | None
                 ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """``(probabilities [B, classes] averaged over the views, views per video, the regions
    recorded by ``blk`` or None)`` of one batch of the loader."""
    raw = batch["video"]  # [B, T, C, H, W] or [B, V, T, C, H, W], uint8
    video = match_channels(raw, getattr(model, "in_chans", raw.shape[-3]))
    size = tuple(getattr(model, "input_size", ()))
    if pred.crop_size is None and len(size) == 2:
        video = match_size(video, size)  # the stored size, as the model was trained
    x = normalize_clip(video.to(dev), pred.mean, pred.std)
    if blk is not None:
        blk.record = True
    try:
        b, views = x.shape[0], x.shape[1] if x.dim() == 6 else 1
        logits = model(x.flatten(0, 1) if x.dim() == 6 else x).float()
        check_finite_logits(logits.view(b, -1), f"predict: {pred.source}", list(batch["key"]))
        probs = logits.softmax(-1).view(b, views, -1).mean(1)
        recorded = blk.last.regions.cpu() if blk is not None else None
    finally:
        if blk is not None:
            blk.record, blk.last = False, None
    return probs, views, recorded


def _batch_entries(batch: dict[str, Any], probs: torch.Tensor, views: int,
                   recorded: torch.Tensor | None, pred: Predictor, keys: dict[str, Any], k: int,
                   regions: str | None) -> list[dict[str, Any]]:
    """One prediction per video of the batch (top ``k``), with its regions GIF if recorded."""
    raw = batch["video"]
    entries = []
    for i, key in enumerate(batch["key"]):
        top = probs[i].topk(k)
        entry = {"video": str(keys[key]), "key": key, "views": views,
                 "top": [(int(c), pred.label(int(c)), float(p))
                         for p, c in zip(top.values.tolist(), top.indices.tolist())]}
        if recorded is not None:
            frames = raw[i, 0] if raw.dim() == 6 else raw[i]
            reg = recorded[i * views]  # the first view of video i
            entry["regions_gif"] = str(_gif(regions, len(keys), key, frames, reg))
        entries.append(entry)
    return entries


def _skipped(loader, keys: dict[str, Any], results: list[dict[str, Any]]
             ) -> list[dict[str, str]]:
    """The videos the loader skipped, with the reason it counted (``unknown`` if none)."""
    got = {r["key"] for r in results}
    reasons = {k_: (r, d) for k_, r, d in loader.epoch_skips.examples}
    return [{"video": str(keys[k_]), "reason": reasons.get(k_, ("unknown", ""))[0],
             "detail": reasons.get(k_, ("", ""))[1]} for k_ in keys if k_ not in got]


def _report(results: list[dict[str, Any]], skipped: list[dict[str, str]], keys: dict[str, Any],
            pred: Predictor) -> dict[str, Any]:
    """Log the skipped videos, fail if none was used, and return predictions in input order."""
    for s in skipped:
        log.warning("skipped %s: %s %s", s["video"], s["reason"], s["detail"][:200])
    if not results:
        raise ValueError("predict: no video could be used: " + "; ".join(
            f"{s['video']}: {s['reason']} ({s['detail'][:120]})" for s in skipped))
    order = {str(p): i for i, p in enumerate(keys.values())}
    results.sort(key=lambda r: order[r["video"]])
    return {"predictions": results, "skipped": skipped, "class_names": bool(pred.class_names)}


def _gif(out: str, count: int, key: str, frames: torch.Tensor, regions: torch.Tensor) -> Path:
    from dyreg_pyg.viz import save_regions_gif

    path = Path(out)
    if count > 1:
        path = path.with_name(f"{path.stem}_{key}{path.suffix or '.gif'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_regions_gif(path, frames, regions)


def export_model(checkpoint: str | Path, out: str | Path, batch_size: int = 2,
                 program: bool = True) -> dict[str, Any]:
    """Write ``<out>/model.safetensors`` (weights + what rebuilds the model, loadable with
    :func:`dyreg_pyg.inference.load_weights` alone) and ``<out>/model.pt2`` (``torch.export``,
    batch size dynamic, checked to give the eager model's logits; see
    :func:`dyreg_pyg.inference.export_program`). If ``torch.export`` fails, the weights are
    still written and the report says why (``"program_error"``)."""
    pred = load_predictor(checkpoint)
    if pred.info.get("preset") is None:
        raise ValueError(f"export-model: {checkpoint} is already an exported weights file")
    model = pred.model.eval()
    kwargs = dict(pred.info["overrides"])
    kwargs.pop("pretrained_file", None)
    kwargs["num_frames"] = pred.num_frames
    kwargs["num_classes"] = pred.num_classes
    # the trained crop (the checkpoint's config), not the preset's size: the program takes
    # clips of exactly this size; without a crop, predict resizes frames to the model's size
    size = ((pred.crop_size,) * 2 if pred.crop_size
            else tuple(getattr(model, "input_size", (224, 224))))
    in_chans = int(getattr(model, "in_chans", 3))
    info = {"preset": pred.info["preset"], "preset_kwargs": kwargs, "num_frames": pred.num_frames,
            "crop_size": pred.crop_size, "dataset": pred.dataset, "mean": pred.mean,
            "std": pred.std, "num_classes": pred.num_classes, "class_names": pred.class_names,
            "input_size": list(size), "in_chans": in_chans, "source": str(checkpoint),
            "preprocessing": preprocessing_spec(pred.num_frames, pred.crop_size, pred.dataset,
                                                pred.mean, pred.std, in_chans, size)}
    out = Path(out)
    report: dict[str, Any] = {"weights": str(save_weights(model, out / "model.safetensors", info))}
    example = torch.randn(batch_size, pred.num_frames, info["in_chans"], *size,
                          generator=torch.Generator().manual_seed(0))
    if program:
        try:
            export_program(model, example, out / "model.pt2")
            report["program"] = str(out / "model.pt2")
        except ExportError as exn:
            log.warning("%s; wrote the weights only", exn)
            report["program_error"] = str(exn)
    (out / "model.json").write_text(json.dumps(info, indent=1))
    report["info"] = str(out / "model.json")
    return report

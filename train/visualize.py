"""``python -m train visualize``: regions of a trained model drawn on validation clips."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dyreg_pyg.data import EmptyDataError
from dyreg_pyg.viz import draw_regions, export_regions, save_regions_gif

from .checkpoint import checkpoint_config, load_checkpoint, load_model_state
from .config import config_from_dict
from .data import external_regions, make_loader, normalise

__all__ = ["visualize", "collect_regions", "region_pictures", "caption", "add_to_tensorboard"]

log = logging.getLogger("train")


@torch.no_grad()
def collect_regions(model, loader, cfg, num: int, block: str | None = None):
    """Run ``model`` on the first ``num`` clips; returns (block name, list of samples) where a
    sample is a dict with ``frames`` (uint8), ``regions``, ``kernels``, ``key``, ``meta``,
    ``pred`` / ``prob`` (the top class and its probability) and ``label`` (or ``None``)."""
    blocks = model.dyreg_blocks()
    if not blocks:
        raise ValueError("visualize: the model has no DyReg block")
    name = block or next(iter(blocks))
    if name not in blocks:
        raise ValueError(f"--block: unknown DyReg block {name!r}; the model has {sorted(blocks)}")
    blk = blocks[name]
    blk.record = True
    model.eval()
    samples = []
    try:
        for batch in loader:
            video = batch["video"]
            if video.dim() == 6:  # several views: keep the first
                video = video[:, 0]
            if getattr(model, "needs_regions", lambda: False)():  # oracle: the true boxes
                logits = model(normalise(video, cfg),
                               regions=external_regions({**batch, "video": video}))
            else:
                logits = model(normalise(video, cfg))
            probs = logits.float().softmax(-1).cpu()
            labels = batch.get("label")
            for i in range(video.shape[0]):
                samples.append({"frames": video[i], "regions": blk.last.regions[i].cpu(),
                                "kernels": blk.last.kernels[i].cpu(), "key": batch["key"][i],
                                "meta": batch["meta"][i] if batch.get("meta") else {},
                                "pred": int(probs[i].argmax()), "prob": float(probs[i].max()),
                                "label": None if labels is None else int(labels[i])})
                if len(samples) >= num:
                    return name, samples
    finally:
        blk.record = False
        blk.last = None
    return name, samples


def caption(sample: dict, class_names: list[str] | None) -> str:
    """``"<key>  true: <class>  pred: <class> (p 0.83) ok"``: a :func:`collect_regions` sample's
    caption (``WRONG`` instead of ``ok`` for a mistake; ``?`` for an unlabelled clip)."""
    def name(c: int | None) -> str:
        if c is None:
            return "?"
        return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)

    mark = "" if sample["label"] is None else (" ok" if sample["label"] == sample["pred"]
                                               else " WRONG")
    return (f"{sample['key']}  true: {name(sample['label'])}  pred: {name(sample['pred'])} "
            f"(p {sample['prob']:.2f}){mark}")


def region_pictures(samples: list[dict], class_names: list[str] | None = None) -> list:
    """One PIL picture per sample: frames with the regions (and the ground-truth boxes of the
    sampled frames), the kernels' heat maps, and a caption with the true and predicted class."""
    pictures = []
    for s in samples:
        boxes = s["meta"].get("boxes") if isinstance(s["meta"], dict) else None
        size = (s["frames"].shape[-1], s["frames"].shape[-2])
        # boxes are stored per video frame; the clip shows the sampled ones
        fidx = s["meta"].get("frame_indices") if boxes else None
        pictures.append(draw_regions(s["frames"], s["regions"], s["kernels"], boxes, size,
                                     frame_indices=fidx, caption=caption(s, class_names)))
    return pictures


def add_to_tensorboard(writer, pictures: list, step: int, tag: str = "regions") -> None:
    """``pictures`` as TensorBoard images ``<tag>/<i>`` at ``step`` (``writer``: a
    ``SummaryWriter``)."""
    import numpy as np

    for i, img in enumerate(pictures):
        writer.add_image(f"{tag}/{i}", np.asarray(img), step, dataformats="HWC")
    writer.flush()


def visualize(checkpoint: str, data: str, out: str, num: int = 4, block: str | None = None,
              export: str | None = None, gif: bool = False,
              tensorboard: str | None = None) -> list[Path]:
    """Write ``regions_<i>.png`` (frames + boxes, kernel heat maps, a caption with the true and
    predicted class), optional GIFs and JSON; ``tensorboard``: also as images in that log
    folder (at the checkpoint's step). Raises :class:`~dyreg_pyg.data.EmptyDataError` (saying
    why) when no sample was read."""
    from .model import build_model

    ck = load_checkpoint(checkpoint)
    cfg = config_from_dict(checkpoint_config(ck))
    cfg.data.val, cfg.data.num_clips, cfg.data.num_crops = data, 1, 1
    cfg.data.num_workers = 0
    model = build_model(cfg, ck["num_classes"])
    load_model_state(model, ck["model"], checkpoint)
    loader = make_loader(cfg, "val")
    name, samples = collect_regions(model, loader, cfg, num, block)
    if not samples:
        raise EmptyDataError(f"visualize: no usable sample was read from {data!r}: "
                             f"{loader.epoch_skips.explain()}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    pictures = region_pictures(samples, ck.get("class_names"))
    for i, (s, img) in enumerate(zip(samples, pictures)):
        p = folder / f"regions_{i}.png"
        img.save(p)
        paths.append(p)
        if gif:
            boxes = s["meta"].get("boxes") if isinstance(s["meta"], dict) else None
            fidx = s["meta"].get("frame_indices") if boxes else None
            size = (s["frames"].shape[-1], s["frames"].shape[-2])
            paths.append(save_regions_gif(folder / f"regions_{i}.gif", s["frames"], s["regions"],
                                          boxes, size, frame_indices=fidx))
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(tensorboard) as writer:
            add_to_tensorboard(writer, pictures, int(ck.get("state", {}).get("step", 0)))
    if export:
        paths.append(export_regions(export, [s["key"] for s in samples],
                                    torch.stack([s["regions"] for s in samples]), name))
    log.info("wrote %d files to %s (block %s)", len(paths), folder, name)
    return paths

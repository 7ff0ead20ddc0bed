"""Pictures of the regions: per-frame boxes (one colour per node) and kernel heat maps.

Drawn with Pillow only (no plotting library), in the layout of the paper's Figures 2-3:
row 1 the frames with every node's region, row 2 the kernels blended over the frames.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["NODE_COLOURS", "draw_regions", "save_regions_gif", "export_regions"]

NODE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195),
)
"""One colour per node (cycled beyond 16 nodes)."""

GT_COLOUR = (255, 255, 255)


def _colour(i: int) -> tuple[int, int, int]:
    return NODE_COLOURS[i % len(NODE_COLOURS)]


def _frame_rgb(frame: Tensor, scale: int) -> Image.Image:
    """``[C, H, W]`` uint8 (C = 1 or 3) -> upscaled RGB image."""
    arr = frame.detach().cpu()
    if arr.dtype != torch.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / max(hi - lo, 1e-8) * 255).round().to(torch.uint8)
    arr = arr.numpy()
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, 0)
    img = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _clip_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int
              ) -> list[float] | None:
    """The box ``[x0, x1) x [y0, y1)`` clipped to a ``w x h`` image, as the inclusive corners
    Pillow draws; ``None`` when no part of it lies inside (e.g. a ground-truth box outside the
    centre crop, which the loader clips to zero width)."""
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]


def _draw_boxes(img: Image.Image, regions: Tensor, gt_boxes: Sequence | None,
                gt_size: tuple[int, int] | None) -> None:
    """Draw the regions (and the ground-truth boxes); boxes are clipped to the image and those
    with nothing inside it are left out."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    if gt_boxes is not None and gt_size is not None:
        gw, gh = gt_size
        for x0, y0, x1, y1 in gt_boxes:
            box = _clip_box(x0 * w / gw, y0 * h / gh, x1 * w / gw, y1 * h / gh, w, h)
            if box is not None:
                draw.rectangle(box, outline=GT_COLOUR, width=1)
    for i, (cx, cy, rw, rh) in enumerate(regions.tolist()):
        box = _clip_box((cx - rw) * w, (cy - rh) * h, (cx + rw) * w, (cy + rh) * h, w, h)
        if box is not None:
            draw.rectangle(box, outline=_colour(i), width=2)
        draw.ellipse([cx * w - 2, cy * h - 2, cx * w + 2, cy * h + 2], fill=_colour(i))


def _heat(img: Image.Image, kernels: Tensor) -> Image.Image:
    """Blend the node kernels (each in its colour, normalised per node) over the frame."""
    n, kh, kw = kernels.shape
    k = kernels.float()
    k = k / k.flatten(1).max(-1).values.clamp_min(1e-12).view(n, 1, 1)
    colours = torch.tensor([_colour(i) for i in range(n)], dtype=torch.float32)  # [N, 3]
    rgb = torch.einsum("nhw,nc->hwc", k, colours).clamp(0, 255)
    heat = Image.fromarray(rgb.round().to(torch.uint8).numpy()).resize(img.size, Image.BILINEAR)
    return Image.blend(img, heat, 0.6)


def _gt_for_frames(gt_boxes: Sequence | None, frame_indices: Sequence[int] | None,
                   t: int) -> list | None:
    """The ground-truth boxes of each of the ``t`` clip positions: ``gt_boxes`` is indexed by
    the video's frame number (as stored), so clip position ``k`` shows frame
    ``frame_indices[k]`` (the metric, ``train.data.batch_object_boxes``, does the same);
    without ``frame_indices`` position ``k`` is frame ``k``."""
    if gt_boxes is None:
        return None
    if frame_indices is None:
        frame_indices = range(t)
    frame_indices = [int(i) for i in frame_indices]
    if len(frame_indices) < t:
        raise ValueError(f"frame_indices: expected one video frame per clip position ({t}), "
                         f"got {len(frame_indices)}")
    n = len(gt_boxes)
    bad = [i for i in frame_indices[:t] if not 0 <= i < n]
    if bad:
        raise ValueError(f"frame_indices: frame {bad[0]} has no ground-truth boxes "
                         f"(gt_boxes holds {n} frames)")
    return [gt_boxes[i] for i in frame_indices[:t]]


def draw_regions(
    frames: Tensor,
    regions: Tensor,
    kernels: Tensor | None = None,
    gt_boxes: Sequence | None = None,
    gt_size: tuple[int, int] | None = None,
    scale: int = 4,
    max_frames: int = 10,
    frame_indices: Sequence[int] | None = None,
    caption: str | None = None,
) -> Image.Image:
    """Frames with every node's region drawn, and optionally a row of kernel heat maps.

    Args:
        frames: ``[T, C, H, W]`` (uint8 or float).
        regions: ``[T, N, 4]`` ``(cx, cy, w, h)`` normalised (what ``DyRegDetails`` holds).
        kernels: ``[T, N, h, w]`` kernels, or ``None`` for no heat-map row.
        gt_boxes: per video frame a list of ground-truth ``(x0, y0, x1, y1)`` in pixels of
            ``gt_size`` = ``(width, height)``; drawn in white, clipped to the frame (boxes
            with no area inside it, e.g. objects outside the centre crop, are left out).
        scale: upscaling of each frame.
        max_frames: at most this many frames, evenly spaced.
        frame_indices: the video frame shown at each clip position (the loader's
            ``meta["frame_indices"]``): clip position ``k`` is drawn with
            ``gt_boxes[frame_indices[k]]``. ``None``: ``gt_boxes`` has one entry per clip
            position.
        caption: a line of text drawn in a strip above the frames (e.g. the true class and
            the prediction), or ``None``.

    Returns:
        An RGB image ``(min(T, max_frames) * W * scale) x (rows * H * scale)``, plus a
        ``CAPTION_HEIGHT``-pixel strip on top when there is a caption.
    """
    if frames.dim() != 4:
        raise ValueError(f"frames: expected [T, C, H, W], got {tuple(frames.shape)}")
    if regions.dim() != 3 or regions.shape[0] != frames.shape[0] or regions.shape[-1] != 4:
        raise ValueError(
            f"regions: expected [T={frames.shape[0]}, N, 4], got {tuple(regions.shape)}"
        )
    t = frames.shape[0]
    gt_boxes = _gt_for_frames(gt_boxes, frame_indices, t)
    idx = torch.linspace(0, t - 1, min(t, max_frames)).round().long().tolist()
    tiles_top, tiles_bottom = [], []
    for j in idx:
        img = _frame_rgb(frames[j], scale)
        if kernels is not None:
            tiles_bottom.append(_heat(img.copy(), kernels[j]))
        _draw_boxes(img, regions[j], None if gt_boxes is None else gt_boxes[j], gt_size)
        tiles_top.append(img)
    tw, th = tiles_top[0].size
    rows = 2 if kernels is not None else 1
    canvas = Image.new("RGB", (tw * len(idx), th * rows))
    for k, tile in enumerate(tiles_top):
        canvas.paste(tile, (k * tw, 0))
    for k, tile in enumerate(tiles_bottom):
        canvas.paste(tile, (k * tw, th))
    return canvas if caption is None else _with_caption(canvas, caption)


CAPTION_HEIGHT = 14
"""Pixels of the text strip that :func:`draw_regions` adds above the frames for a caption."""


def _with_caption(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + CAPTION_HEIGHT))
    out.paste(img, (0, CAPTION_HEIGHT))
    ImageDraw.Draw(out).text((2, 1), text, fill=(255, 255, 255))
    return out


def save_regions_gif(path: str | Path, frames: Tensor, regions: Tensor,
                     gt_boxes: Sequence | None = None, gt_size: tuple[int, int] | None = None,
                     scale: int = 4, duration_ms: int = 200,
                     frame_indices: Sequence[int] | None = None) -> Path:
    """An animated GIF of the frames with the regions drawn (``gt_boxes`` and
    ``frame_indices`` as in :func:`draw_regions`)."""
    gt_boxes = _gt_for_frames(gt_boxes, frame_indices, frames.shape[0])
    images = []
    for j in range(frames.shape[0]):
        img = _frame_rgb(frames[j], scale)
        _draw_boxes(img, regions[j], None if gt_boxes is None else gt_boxes[j], gt_size)
        images.append(img)
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def export_regions(path: str | Path, keys: Sequence[str], regions: Tensor,
                   block: str = "") -> Path:
    """Write per-frame boxes as JSON: ``{key: {"block":..., "frames": [[[x0,y0,x1,y1], ...]]}}``
    with coordinates normalised to ``[0, 1]`` (``regions [B, T, N, 4]`` as ``(cx, cy, w, h)``)."""
    from .geometry import regions_to_boxes

    boxes = regions_to_boxes(regions.detach().cpu()).tolist()
    payload = {k: {"block": block, "format": "x0,y0,x1,y1 normalised", "frames": b}
               for k, b in zip(keys, boxes)}
    path = Path(path)
    path.write_text(json.dumps(payload, indent=1))
    return path

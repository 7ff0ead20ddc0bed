"""Clip sampling (TSN/TSM) and clip transforms on uint8 tensors ``[T, C, H, W]``.

Spatial transforms are described by a :class:`View` (a crop box in the input frame, an output
size and a flip flag) so that the same geometry can be applied to the frames and to ground-truth
boxes. Every function is deterministic given its ``rng``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "TSM_SCALES", "View", "train_indices", "eval_indices", "resize_short_side",
    "multiscale_crop_view", "center_crop_view", "three_crop_views", "apply_view",
    "transform_boxes", "normalize_clip",
]

#: TSM's multi-scale crop scales (``GroupMultiScaleCrop(input_size, [1, .875, .75, .66])``).
TSM_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


# --------------------------------------------------------------------------- temporal sampling


def train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """TSN/TSM training sampling: one random frame in each of ``num_segments`` equal segments.

    With fewer frames than segments, frames repeat (``floor(k * n / T)``).
    """
    _check_counts(num_frames, num_segments)
    n, t = num_frames, num_segments
    if n < t:
        return (np.arange(t) * n // t).astype(np.int64)
    starts = np.floor(np.arange(t) * n / t).astype(np.int64)
    ends = np.floor(np.arange(1, t + 1) * n / t).astype(np.int64)
    return starts + (rng.random(t) * (ends - starts)).astype(np.int64)


def eval_indices(num_frames: int, num_segments: int, num_clips: int = 1) -> np.ndarray:
    """TSM evaluation sampling: ``[num_clips, T]`` frame indices; clip 0 takes the centre of
    each of T equal segments, clip ``c`` is shifted by ``c / num_clips`` of a segment (so two
    clips are TSM's ``twice_sample``: centres and segment starts)."""
    _check_counts(num_frames, num_segments)
    if num_clips < 1:
        raise ValueError(f"num_clips: expected >= 1, got {num_clips}")
    tick = num_frames / num_segments
    out = np.empty((num_clips, num_segments), np.int64)
    for c in range(num_clips):
        shift = (0.5 + c / num_clips) % 1.0
        out[c] = np.floor(tick * (np.arange(num_segments) + shift)).astype(np.int64)
    return np.clip(out, 0, num_frames - 1)


def _check_counts(num_frames: int, num_segments: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames: the video has no frames ({num_frames})")
    if num_segments < 1:
        raise ValueError(f"num_segments: expected >= 1, got {num_segments}")


# --------------------------------------------------------------------------- spatial views


@dataclass(frozen=True)
class View:
    """A crop ``(x0, y0, w, h)`` of the (already short-side resized) frame, resized to
    ``out = (out_w, out_h)``, optionally flipped horizontally."""

    x0: int
    y0: int
    w: int
    h: int
    out_w: int
    out_h: int
    flip: bool = False


def _short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    if h <= w:
        return short, max(1, round(w * short / h))
    return max(1, round(h * short / w)), short


def resize_short_side(clip: torch.Tensor, short: int | None) -> torch.Tensor:
    """Resize uint8 ``[T, C, H, W]`` so that ``min(H, W) == short`` (aspect kept; bilinear,
    antialiased). ``None`` or an already matching size returns the input."""
    if short is None:
        return clip
    h, w = clip.shape[-2:]
    if min(h, w) == short:
        return clip
    return _resize(clip, *_short_side_size(h, w, short))


def _resize(clip: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 ``[T, C, H, W]``; uses PyTorch's native uint8
    kernel (about 4x faster than going through float) where the build has it."""
    if clip.dtype == torch.uint8 and clip.device.type == "cpu":
        try:
            return F.interpolate(clip, size=(h, w), mode="bilinear", align_corners=False,
                                 antialias=True)
        except (RuntimeError, NotImplementedError):  # older builds: no uint8 kernel
            pass
    x = F.interpolate(clip.float(), size=(h, w), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round_().clamp_(0, 255).to(clip.dtype)


def multiscale_crop_view(h: int, w: int, out: int, rng: np.random.Generator,
                         scales: Sequence[float] = TSM_SCALES, max_distort: int = 1,
                         more_fix_crop: bool = True, flip: bool = False) -> View:
    """TSM's ``GroupMultiScaleCrop`` (fix_crop, more_fix_crop): crop width and height are each
    one of ``scales`` times the short side (at most ``max_distort`` scale steps apart), placed
    at one of 13 fixed positions, then resized to ``out`` x ``out``."""
    base = min(h, w)
    sizes = [int(base * s) for s in scales]
    crop_h = [out if abs(s - out) < 3 else s for s in sizes]
    crop_w = [out if abs(s - out) < 3 else s for s in sizes]
    pairs = [(cw, ch) for i, ch in enumerate(crop_h) for j, cw in enumerate(crop_w)
             if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    cw, ch = max(1, min(cw, w)), max(1, min(ch, h))
    ws, hs = (w - cw) // 4, (h - ch) // 4
    offsets = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    if more_fix_crop:
        offsets += [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
                    (1 * ws, 1 * hs), (3 * ws, 1 * hs), (1 * ws, 3 * hs), (3 * ws, 3 * hs)]
    x0, y0 = offsets[int(rng.integers(len(offsets)))]
    return View(x0, y0, cw, ch, out, out, flip)


def center_crop_view(h: int, w: int, out: int) -> View:
    """Centre crop ``out`` x ``out`` (the crop is shrunk, then resized, if the frame is
    smaller)."""
    cw, ch = min(out, w), min(out, h)
    return View((w - cw) // 2, (h - ch) // 2, cw, ch, out, out)


def three_crop_views(h: int, w: int, out: int) -> list[View]:
    """TSM's 3-crop evaluation (``GroupFullResSample``): centre, then the two ends of the long
    side (left/right or top/bottom), each ``out`` x ``out``."""
    cw, ch = min(out, w), min(out, h)
    cx, cy = (w - cw) // 2, (h - ch) // 2
    if w >= h:
        pos = [(cx, cy), (0, cy), (w - cw, cy)]
    else:
        pos = [(cx, cy), (cx, 0), (cx, h - ch)]
    return [View(x, y, cw, ch, out, out) for x, y in pos]


def apply_view(clip: torch.Tensor, view: View) -> torch.Tensor:
    """Crop, resize and flip uint8 ``[T, C, H, W]`` as ``view`` says."""
    x = clip[..., view.y0:view.y0 + view.h, view.x0:view.x0 + view.w]
    if (view.h, view.w) != (view.out_h, view.out_w):
        x = _resize(x, view.out_h, view.out_w)
    if view.flip:
        x = x.flip(-1)
    return x.contiguous()


def transform_boxes(boxes: list, scale: tuple[float, float], view: View) -> list:
    """Map boxes ``[T][M][4]`` ``(x0, y0, x1, y1)`` in pixels of the stored frame to pixels of
    the output clip: resize by ``scale = (sx, sy)``, crop and resize by ``view``, flip; clipped
    to the output frame."""
    sx, sy = scale
    kx, ky = view.out_w / view.w, view.out_h / view.h
    out = []
    for frame in boxes:
        fb = []
        for b in frame:
            x0 = (b[0] * sx - view.x0) * kx
            x1 = (b[2] * sx - view.x0) * kx
            y0 = (b[1] * sy - view.y0) * ky
            y1 = (b[3] * sy - view.y0) * ky
            if view.flip:
                x0, x1 = view.out_w - x1, view.out_w - x0
            fb.append([round(min(max(v, 0.0), lim), 3) for v, lim in
                       ((x0, view.out_w), (y0, view.out_h), (x1, view.out_w), (y1, view.out_h))])
        out.append(fb)
    return out


# --------------------------------------------------------------------------- normalisation


def normalize_clip(video: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                   std: Sequence[float] | torch.Tensor, dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
    """uint8 clips ``[..., C, H, W]`` -> ``(video / 255 - mean) / std`` as float, on the
    video's device (run it after ``.to(device)`` to move 4x fewer bytes).

    Args:
        video: uint8 (or float in [0, 255]) tensor whose third-to-last dimension is channels.
        mean, std: One value per channel (or a single value for all channels), in [0, 1] units.
        dtype: Output floating dtype.
    """
    if video.dim() < 3:
        raise ValueError(f"video: expected [..., C, H, W], got shape {tuple(video.shape)}")
    c = video.shape[-3]
    m = torch.as_tensor(mean, dtype=dtype, device=video.device).flatten()
    s = torch.as_tensor(std, dtype=dtype, device=video.device).flatten()
    for name, v in (("mean", m), ("std", s)):
        if v.numel() not in (1, c):
            raise ValueError(f"{name}: expected 1 or {c} values (channels), got {v.numel()}")
    if bool((s <= 0).any()):
        raise ValueError(f"std: expected positive values, got {s.tolist()}")
    scale = 1.0 / (255.0 * s)
    shift = m / s
    x = video.to(dtype)
    return x.mul_(scale.view(-1, 1, 1)).sub_(shift.view(-1, 1, 1)) if x is not video else \
        x * scale.view(-1, 1, 1) - shift.view(-1, 1, 1)


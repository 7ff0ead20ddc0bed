"""Inference outside the training code: video files in, and a trained video model out.

* :func:`pack_videos` puts video files (webm, mp4, ...) and frame folders into a one-shard
  WebDataset tar, so that they go through the very pipeline the evaluation uses
  (:func:`~dyreg_pyg.data.make_clip_loader`: segment-centre frames, resize, centre or 3
  crops, and skipped-and-counted corrupt samples).
* :func:`export_program` is ``torch.export`` of a video model (batch size dynamic), checked
  against the eager model; :func:`save_weights` / :func:`load_weights` write and read the
  weights as safetensors with what rebuilding the model needs in the file's metadata (the
  preset name and its arguments, the clip size, the normalisation and the class names), so a
  model loads with ``dyreg_pyg`` alone, without the training code or its YAML files.
* :func:`preprocessing_spec` describes how the evaluation turns a video into the model's
  clip (frame sampling, resize, crop, channels, normalisation); ``export-model`` ships it in
  ``model.json``, and :func:`run_exported` applies it and runs the exported program on a
  video file or a uint8 frame array.
"""

from __future__ import annotations

import io
import json
import logging
import re
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_finite, not_a_file
from .data.decode import VIDEO_EXTS
from .data.shards import ShardWriter

__all__ = ["IMAGE_EXTS", "MAX_SIDE", "pack_videos", "match_channels", "match_size",
           "export_program", "load_program", "save_weights", "load_weights", "WEIGHTS_META_KEY",
           "ExportError", "preprocessing_spec", "preprocess_video", "run_exported"]

log = logging.getLogger(__name__)

#: Frame files a frame folder may hold (sorted by the numbers in their names).
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "bmp", "webp")
#: Frames whose longer side is larger are decoded at a reduced size (see :func:`pack_videos`).
MAX_SIDE = 1024
#: The safetensors metadata entry that holds the model's description (JSON).
WEIGHTS_META_KEY = "dyreg_pyg"


class ExportError(RuntimeError):
    """``torch.export`` could not trace the model, or the exported program's logits differ
    from the eager model's."""


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _sample_key(index: int, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name.split(".")[0])[:60] or "video"
    return f"v{index:04d}-{stem}"


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header (nothing decoded); ``None`` if PIL
    cannot read it (the loader then counts the frame as corrupt)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # PIL raises many types for a bad file
        return None


def _read_frame(path: Path, max_side: int | None) -> np.ndarray:
    """RGB ``[H, W, 3]`` of an image file, its longer side at most ``max_side``: a JPEG is
    decoded by libjpeg directly at 1/2, 1/4 or 1/8 scale (the full-size picture is never
    held in memory), then resized (aspect kept)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if max_side and max(img.size) > max_side:
                img.draft("RGB", (max_side, max_side))  # JPEG only; others decode whole
                rgb = img.convert("RGB")
                rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            else:
                rgb = img.convert("RGB")
            return np.asarray(rgb)
    except Exception as exn:  # PIL raises many types for a bad file
        raise ValueError(f"video: frame {path} cannot be read: {exn!r}") from exn


def _frame_folder_members(folder: Path, max_side: int | None = MAX_SIDE) -> dict[str, bytes]:
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise ValueError(f"video: {folder} is a folder with no frame image "
                         f"({', '.join(IMAGE_EXTS)})")
    small = not max_side or all(max(_image_size(p) or (0,)) <= max_side for p in files)
    if small and all(p.suffix.lower() in (".jpg", ".jpeg") for p in files):
        # As the Something-Something shards store frames: decoded by the loader itself.
        return {f"{i:06d}.jpg": p.read_bytes() for i, p in enumerate(files)}
    if not small:
        log.info("video: %s: frames larger than %d px are decoded at reduced size "
                 "(max_side)", folder, max_side)
    frames = [_read_frame(p, max_side) for p in files]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"video: the frames in {folder} differ in size")
    buf = io.BytesIO()
    np.save(buf, np.stack(frames), allow_pickle=False)
    return {"frames.npy": buf.getvalue()}


def pack_videos(paths: Sequence[str | Path], folder: str | Path,
                max_side: int | None = MAX_SIDE) -> tuple[str, dict[str, Path]]:
    """Write the videos ``paths`` into one tar shard in ``folder`` for
    :func:`~dyreg_pyg.data.make_clip_loader` (use an evaluation split: ``"test"`` when there
    are no labels).

    A path is an encoded video (``.webm``, ``.mp4``, ``.mkv``, ``.avi``, ``.mov``: the bytes
    are stored as they are and decoded by PyAV in the loader) or a folder of frames (JPEGs are
    stored as they are; other images are decoded once into a lossless ``frames.npy``). A
    folder with a frame whose longer side exceeds ``max_side`` pixels (``None`` or 0: no
    limit) is decoded here, every frame shrunk to fit ``max_side`` (aspect kept; a JPEG is
    decoded by libjpeg at 1/2 to 1/8 scale, so a huge picture never exists at full size in
    memory), into ``frames.npy``: memory stays bounded whatever the pictures' size.

    Returns:
        ``(shard path, {sample key: video path})``.

    Raises:
        ValueError: a path that does not exist, is neither a regular file nor a folder (a
            fifo, a socket, a device: named as such), has an extension no decoder reads, or is
            a folder without frames (checked for every path before anything is written). The
            content of a video file is only checked when it is decoded: a corrupt file is a
            skipped sample (reason ``corrupt_video``) of the loader.
    """
    if not paths:
        raise ValueError("videos: expected at least one video file or frame folder, got none")
    items: list[tuple[str, Path, dict[str, bytes] | None]] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        key = _sample_key(i, path)
        if path.is_dir():
            items.append((key, path, None))
        elif path.is_file():
            ext = path.suffix.lower().lstrip(".")
            if ext not in VIDEO_EXTS:
                raise ValueError(f"video: {path} has extension {path.suffix!r}; expected a video "
                                 f"({', '.join('.' + e for e in VIDEO_EXTS)}) or a frame folder")
            items.append((key, path, None))
        else:
            raise ValueError(f"video: {path} {not_a_file(path) or 'is not a regular file'}"
                             "; expected a video file or a frame folder")
    keys: dict[str, Path] = {}
    with ShardWriter(folder, "predict", maxcount=len(items) + 1) as writer:
        for key, path, _ in items:
            if path.is_dir():
                members = _frame_folder_members(path, max_side)
            else:
                members = {path.suffix.lower().lstrip("."): path.read_bytes()}
            writer.write(key, members)
            keys[key] = path
    return str(writer.shard_path(0)), keys


def match_channels(video: Tensor, in_chans: int) -> Tensor:
    """uint8 frames ``[..., C, H, W]`` with ``in_chans`` channels: RGB -> luma (ITU-R 601,
    as Pillow's ``"L"``) for a 1-channel model, grey repeated for a 3-channel one."""
    c = video.shape[-3]
    if c == in_chans:
        return video
    if c == 3 and in_chans == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
        grey = (video.float() * w).sum(-3, keepdim=True)
        return grey.round().clamp(0, 255).to(torch.uint8)
    if c == 1 and in_chans == 3:
        return video.expand(*video.shape[:-3], 3, *video.shape[-2:]).contiguous()
    raise ValueError(f"video: frames with {c} channels cannot feed a model with in_chans="
                     f"{in_chans}")


def match_size(video: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 frames ``[..., C, H, W]`` resized (bilinear, antialiased) to ``size = (H, W)``
    unless they have it already."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    lead = video.shape[:-3]
    flat = video.reshape(-1, *video.shape[-3:]).float()
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*lead, video.shape[-3], *size)


def export_program(model: nn.Module, example: Tensor, path: str | Path | None = None,
                   atol: float = 1e-4, max_batch: int = 1024) -> torch.export.ExportedProgram:
    """``torch.export`` of a video model in eval mode, the batch dimension dynamic
    (1 .. ``max_batch``), checked to give the eager model's logits on ``example`` and on the
    same clips with the batch size plus one.

    Args:
        model: a :class:`~dyreg_pyg.VideoModel` (put in eval mode).
        example: a normalised clip batch ``[B, T, C, H, W]``, ``B >= 2``.
        path: also ``torch.export.save`` the program there (``.pt2``).

    Raises:
        ExportError: tracing failed (the message holds torch's own first line, which names
            the operation and source line where it broke), or the logits differ by more than
            ``atol``.
    """
    if example.dim() != 5 or example.shape[0] < 2:
        raise ValueError(f"example: expected a clip batch [B, T, C, H, W] with B >= 2 "
                         f"(torch.export specialises a dimension of size 1), got shape "
                         f"{tuple(example.shape)}")
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings():
        # nn.GRU sets its _flat_weights list during export; torch warns about it, harmlessly
        # (the weights are the module's parameters, read at call time).
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        try:
            program = torch.export.export(model, (example,), dynamic_shapes={"clip": {0: batch}})
        except Exception as exn:
            first = str(exn).strip().splitlines()[0] if str(exn).strip() else ""
            raise ExportError(f"torch.export could not trace {type(model).__name__}: "
                              f"{type(exn).__name__}: {first}{_where(exn)}") from exn
    with torch.no_grad():
        more = torch.cat([example, example[:1]])
        for clips in (example, more):
            eager, exported = model(clips), program.module()(clips)
            diff = float((eager - exported).abs().max())
            if diff > atol:
                raise ExportError(f"torch.export: the exported program's logits differ from the "
                                  f"eager model's by {diff:.3g} (> {atol}) on a batch of "
                                  f"{clips.shape[0]}")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    return program


def _where(exn: BaseException) -> str:
    """`` at <file>:<line> (<function>)`` of the innermost frame of the model's own code
    (``dyreg_pyg`` or timm) in ``exn``'s traceback, or ``""``."""
    here = Path(__file__).resolve()
    frames = [f for f in traceback.extract_tb(exn.__traceback__)
              if ("dyreg_pyg" in f.filename or "/timm/" in f.filename)
              and Path(f.filename).resolve() != here]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"


def load_program(path: str | Path) -> nn.Module:
    """The callable module of a ``.pt2`` written by :func:`export_program` (clip in, logits
    out; normalise the clip as the weights' metadata says)."""
    return torch.export.load(str(path)).module()


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exn:
        raise ImportError("safetensors is not installed: pip install safetensors (or "
                          "pip install 'dyreg-pyg[export]')") from exn
    return st


def save_weights(model: nn.Module, path: str | Path, info: dict[str, Any]) -> Path:
    """Write ``model``'s weights as safetensors with ``info`` (JSON) in the metadata.

    ``info`` must name what rebuilds the model: ``preset`` and ``preset_kwargs`` (the
    arguments of :func:`~dyreg_pyg.models.build_preset`); anything else JSON-able rides along
    (clip size, ``mean`` / ``std``, ``class_names`` ...)."""
    st = _safetensors()
    if "preset" not in info or "preset_kwargs" not in info:
        raise ValueError(f"info: expected 'preset' and 'preset_kwargs' keys, got {sorted(info)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    st.save_model(model, str(path), metadata={WEIGHTS_META_KEY: json.dumps(info)})
    return path


def load_weights(path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described in a :func:`save_weights` file and load its weights
    (strict); returns ``(model in eval mode, info)``.

    Raises:
        ValueError: naming the file: it is not a regular file, not safetensors, or not
            written by :func:`save_weights`; its tensors do not fit the preset (each shape
            mismatch listed as ``key (file shape) -> model (model shape)``, missing and
            unexpected keys); or a weight is NaN or inf
            (:class:`~dyreg_pyg._checks.NonFiniteError`, naming the first such key).
    """
    st = _safetensors()
    from safetensors import safe_open

    from .models import build_preset

    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise ValueError(f"weights: {path} {problem}")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exn:
        raise ValueError(f"weights: {path} is not a readable safetensors file: {exn!r}") from exn
    if WEIGHTS_META_KEY not in meta:
        raise ValueError(f"weights: {path} has no {WEIGHTS_META_KEY!r} metadata (not written by "
                         "dyreg_pyg.inference.save_weights)")
    info = json.loads(meta[WEIGHTS_META_KEY])
    model = build_preset(info["preset"], **info["preset_kwargs"])
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} {shapes[k]} -> model {own[k]}" for k in sorted(own.keys() & shapes.keys())
             if shapes[k] != own[k]]
    if wrong:
        raise ValueError(f"weights: {path} does not match preset {info['preset']!r}: shape "
                         f"mismatches ({len(wrong)}): {wrong[:8]}"
                         + (f" ... (+{len(wrong) - 8})" if len(wrong) > 8 else ""))
    missing, unexpected = st.load_model(model, str(path), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"weights: {path} does not match preset {info['preset']!r}: missing "
                         f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    check_finite(model.state_dict(), f"weights: {path}")
    return model.eval(), info


def preprocessing_spec(num_frames: int, crop_size: int | None, dataset: str,
                       mean: Sequence[float], std: Sequence[float], in_chans: int,
                       input_size: Sequence[int]) -> dict[str, Any]:
    """How the evaluation turns a video into a model clip, as JSON-able data (what
    ``export-model`` ships in ``model.json`` under ``"preprocessing"``):

    * ``num_frames`` frames at the segment centres: frame ``floor((k + 0.5) * n / T)`` of a
      video of ``n`` frames, ``k = 0 .. T-1``;
    * with a ``crop`` (the crop the model was trained at): the short side resized to
      ``resize_short_side`` (bilinear, antialiased), then the centre ``crop x crop``;
      without one: every frame resized to ``size``;
    * ``in_chans`` channels (RGB to luma, ITU-R 601, for a 1-channel model);
    * ``(x / 255 - mean) / std`` per channel, as float32 ``[B, T, C, H, W]``.

    ``size`` is the ``(H, W)`` the exported program takes."""
    from .data.loader import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {dataset!r}")
    short = None
    if crop_size:
        short = DATASETS[dataset]["resize_size"] or round(crop_size * 256 / 224)
    return {"num_frames": int(num_frames), "sampling": "segment centres",
            "resize_short_side": short, "crop": int(crop_size) if crop_size else None,
            "size": [int(x) for x in input_size], "in_chans": int(in_chans),
            "mean": [float(x) for x in mean], "std": [float(x) for x in std],
            "dataset": dataset, "layout": "[B, T, C, H, W] float32"}


def _frames_shard(frames: np.ndarray, folder: Path) -> str:
    """A uint8 frame array ``[T, H, W]`` or ``[T, H, W, C]`` as a one-sample shard."""
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0 or (
            frames.ndim == 4 and frames.shape[-1] not in (1, 3)):
        raise ValueError(f"video: expected uint8 frames [T, H, W] or [T, H, W, 1|3], got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(frames), allow_pickle=False)
    with ShardWriter(folder, "frames", maxcount=2) as writer:
        writer.write("frames", {"frames.npy": buf.getvalue()})
    return str(writer.shard_path(0))


def preprocess_video(video: str | Path | np.ndarray, spec: dict[str, Any]) -> Tensor:
    """The normalised clip ``[1, T, C, H, W]`` of a video file / frame folder or a uint8
    frame array ``[T, H, W(, C)]``, made as :func:`preprocessing_spec` ``spec`` says, by the
    evaluation's own loader (:func:`~dyreg_pyg.data.make_clip_loader`).

    Raises:
        ValueError: a path that is no video, a bad array, or a video that cannot be decoded
            (the message says why)."""
    import tempfile

    from .data import ClipLoaderConfig, make_clip_loader, normalize_clip
    from .data.loader import DATASETS

    crop, short = spec["crop"], spec["resize_short_side"]
    default = DATASETS[spec["dataset"]]["resize_size"] or (
        round(crop * 256 / 224) if crop else None)
    # the loader's own default when it is the same size, so that everything else it derives
    # from the setting (the JPEG draft size) is the evaluation's too
    resize = None if short == default else short
    with tempfile.TemporaryDirectory(prefix="dyreg-run-") as tmp:
        if isinstance(video, np.ndarray):
            shard = _frames_shard(video, Path(tmp))
        else:
            shard, _ = pack_videos([video], tmp)
        loader = make_clip_loader(shard, "test", ClipLoaderConfig(
            num_frames=spec["num_frames"], batch_size=1, num_workers=0, crop_size=crop,
            dataset=spec["dataset"], resize_size=resize, rank=0, world_size=1))
        batches = list(loader)
        if not batches:
            why = "; ".join(f"{r}: {d[:200]}" for _, r, d in loader.epoch_skips.examples)
            raise ValueError(f"video: {video if not isinstance(video, np.ndarray) else 'array'}"
                             f" could not be used ({why or 'no frames'})")
    clip = match_channels(batches[0]["video"], spec["in_chans"])
    clip = match_size(clip, tuple(spec["size"]))  # no-op after a crop to that size
    return normalize_clip(clip, spec["mean"], spec["std"])


def run_exported(folder: str | Path, video: str | Path | np.ndarray,
                 program: nn.Module | None = None) -> Tensor:
    """Class probabilities ``[num_classes]`` of one video from an ``export-model`` folder
    (``model.json`` and ``model.pt2``), without the training code::

        probs = run_exported("export/", "clip.webm")
        names = json.load(open("export/model.json"))["class_names"]

    Args:
        folder: the folder ``python -m train export-model --out`` wrote.
        video: a video file (webm, mp4, ...), a frame folder, or uint8 frames
            ``[T, H, W]`` / ``[T, H, W, C]`` (RGB).
        program: the loaded program (:func:`load_program`), to run many videos without
            loading it each time; default: ``folder/model.pt2``.
    """
    folder = Path(folder)
    info_path = folder / "model.json"
    if not info_path.is_file():
        raise ValueError(f"export: {folder} has no model.json (not written by "
                         "`python -m train export-model`?)")
    spec = json.loads(info_path.read_text()).get("preprocessing")
    if not isinstance(spec, dict):
        raise ValueError(f"export: {info_path} has no 'preprocessing' entry (exported by an "
                         "older version: export the checkpoint again)")
    if program is None:
        program = load_program(folder / "model.pt2")
    clip = preprocess_video(video, spec)
    with torch.no_grad():
        return program(clip).float().softmax(-1)[0]

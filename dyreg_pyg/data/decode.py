"""Decoders for shard members: ``.npy`` frame arrays (never pickle), JPEG frames (PIL) and
encoded videos (PyAV). Each raises :class:`CorruptSample` with a short reason on bad data."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CorruptSample", "VIDEO_EXTS", "FRAME_RE", "decode_npy_frames", "decode_jpeg",
    "decode_video", "frame_members",
]

#: Member extensions holding an encoded video.
VIDEO_EXTS: tuple[str, ...] = ("webm", "mp4", "mkv", "avi", "mov")
#: Member extensions of per-frame JPEGs inside a sample: ``<key>.<frame number>.jpg``.
FRAME_RE = re.compile(r"^(\d+)\.(jpg|jpeg)$")


class CorruptSample(Exception):
    """A sample that cannot be used; ``reason`` is a short category for the skip counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_npy_frames(data: bytes) -> np.ndarray:
    """uint8 ``[T, H, W]`` or ``[T, H, W, C]`` from ``.npy`` bytes, loaded without pickle."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exn:  # ValueError (pickle / header), EOFError, OSError
        raise CorruptSample("corrupt_npy", repr(exn)) from exn
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or 0 in arr.shape:
        raise CorruptSample("corrupt_npy", f"expected uint8 [T, H, W(, C)], got {arr.dtype} "
                            f"{arr.shape}")
    return arr


def decode_jpeg(data: bytes, mode: str = "RGB", draft: int | None = None) -> np.ndarray:
    """``[H, W, 3]`` (RGB) or ``[H, W]`` (L) uint8 from JPEG bytes.

    ``draft``: let libjpeg decode directly at a reduced scale whose short side is still
    ``>= draft`` (much faster for large frames)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if draft is not None:
            img.draft(mode, (draft, draft))
        img = img.convert(mode)
        img.load()
        return np.asarray(img)
    except Exception as exn:
        raise CorruptSample("corrupt_jpeg", repr(exn)) from exn


def frame_members(sample: dict) -> list[str]:
    """Names of the per-frame JPEG members of a sample, in frame order."""
    found = []
    for name in sample:
        m = FRAME_RE.match(name)
        if m:
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def decode_video(data: bytes, choose: Callable[[int], Sequence[int]]) -> tuple[list[np.ndarray],
                                                                                  int, float]:
    """Decode an encoded video (any container/codec PyAV reads) and convert the frames picked
    by ``choose(num_frames)`` to RGB uint8 ``[H, W, 3]``.

    Returns:
        ``(frames in the order of the chosen indices, number of frames, fps)``.
    """
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise CorruptSample("corrupt_video", "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate) if stream.average_rate else 0.0
            frames = list(container.decode(stream))
    except CorruptSample:
        raise
    except Exception as exn:  # av.error.*, OSError, ValueError
        raise CorruptSample("corrupt_video", repr(exn)) from exn
    if not frames:
        raise CorruptSample("corrupt_video", "no decodable frame")
    idx = [int(i) for i in choose(len(frames))]
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in idx:
        if i not in cache:
            cache[i] = frames[i].to_ndarray(format="rgb24")
        out.append(cache[i])
    return out, len(frames), fps

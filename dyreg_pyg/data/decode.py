"""Decoders for shard members: ``.npy`` frame arrays (never pickle), JPEG frames (PIL) and
encoded videos (PyAV, decoded only as far as the sampled frames need). Each raises
:class:`CorruptSample` with a short reason on bad data."""

from __future__ import annotations

import bisect
import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CorruptSample", "VIDEO_EXTS", "FRAME_RE", "decode_npy_frames", "decode_jpeg",
    "decode_video", "frame_members", "DecodeStats", "SEEK_CODECS", "SEEK_MIN_GAP",
]

log = logging.getLogger(__name__)

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


class _Fallback(Exception):
    """The sparse path cannot prove its frames equal the full decode's; ``str`` is the reason."""


@dataclass
class DecodeStats:
    """Counters of :func:`decode_video` (pass one in to collect them; nothing is global).

    ``videos``: videos decoded; ``sparse``: of these, decoded only as far as the sampled frames
    need; ``fallbacks``: per reason, videos decoded in full instead (same frames as before,
    only slower); ``seeks``: jumps to a keyframe; ``packets_total`` / ``packets_decoded``:
    packets in the sparse videos / packets sent to the decoder for them."""

    videos: int = 0
    sparse: int = 0
    seeks: int = 0
    packets_total: int = 0
    packets_decoded: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)


#: Decoders whose keyframes are clean random-access points: decoding from one gives the same
#: frames (at and after its time stamp) as decoding from the start. Other codecs are still
#: decoded only up to the last sampled frame, but from the start, never from a keyframe.
SEEK_CODECS: frozenset[str] = frozenset({
    "vp8", "vp9", "av1", "libdav1d", "libaom-av1", "h264", "hevc", "mpeg4", "mpeg1video",
    "mpeg2video", "mjpeg",
})

#: Jump to a keyframe only when that skips at least this many packets (the measurement behind
#: it: :func:`decode_video`, ``benchmarks/bench_decode_seek.py``).
SEEK_MIN_GAP: int = 8


#: Fallback reasons found while decoding (the decoder's frames did not match the packets);
#: logged as warnings, the others (found before decoding) at DEBUG level.
_DECODER_DISAGREES = frozenset({"pts_mismatch", "frame_missing", "frame_without_pts"})


@dataclass
class _PacketIndex:
    """What one demux pass (no decoding) tells about a video stream."""

    packets: list          # av.Packet in decode order
    pts: np.ndarray        # [n] presentation time stamps, ascending: frame i has pts[i]
    rank: dict[int, int]   # pts -> frame index
    start: np.ndarray      # [n] packet position to start decoding at for frame i


def _index_packets(container: Any, stream: Any, seekable: bool, reorders: bool = False
                   ) -> _PacketIndex:
    """Demux (not decode) every packet of ``stream``; raise :class:`_Fallback` when the packets
    cannot stand for the frames one-to-one. ``reorders``: the decoder may output frames out of
    decode order (B-frames)."""
    try:
        packets = list(container.demux(stream))
    except Exception as exn:  # let the full decode decide whether the video is corrupt
        raise _Fallback("demux_error") from exn
    while packets and packets[-1].size == 0:  # the demuxer's closing flush packet(s)
        packets.pop()
    if not packets:
        raise _Fallback("no_packets")
    if any(p.size == 0 for p in packets):  # e.g. AVI's dropped-frame chunks
        raise _Fallback("empty_packets")
    if any(p.pts is None for p in packets):
        raise _Fallback("no_pts")
    if any(p.is_discard or p.is_corrupt for p in packets):
        raise _Fallback("discard_or_corrupt_packets")
    pts_dec = np.array([int(p.pts) for p in packets], np.int64)
    pts = np.sort(pts_dec)
    if len(pts) > 1 and not (np.diff(pts) > 0).all():
        raise _Fallback("duplicate_pts")
    if not packets[0].is_keyframe or pts_dec[0] != pts[0]:
        raise _Fallback("no_leading_keyframe")
    if reorders and len(pts) > 2 and (np.diff(pts_dec) > 0).all():
        # A codec that shows frames out of decode order, with time stamps that never are:
        # they were made up from the decode order (AVI does this), so they cannot rank frames.
        raise _Fallback("pts_in_decode_order")
    header = int(stream.frames or 0)
    if header > 0 and header != len(packets):
        raise _Fallback("frame_count_mismatch")
    rank = {int(t): i for i, t in enumerate(pts)}
    start = np.zeros(len(packets), np.int64)
    if seekable:
        keys = [k for k, p in enumerate(packets) if p.is_keyframe]
        for pos, t in enumerate(pts_dec):
            # The last keyframe at or before this packet whose own time is not later (frames
            # shown before an open-GOP keyframe need the GOP before it).
            k = bisect.bisect_right(keys, pos) - 1
            while pts_dec[keys[k]] > t:
                k -= 1
            start[rank[int(t)]] = keys[k]
    return _PacketIndex(packets, pts, rank, start)


def _decode_sparse(ctx: Any, index: _PacketIndex, needed: np.ndarray, min_gap: int,
                   stats: DecodeStats) -> dict[int, np.ndarray]:
    """RGB frames ``needed`` (sorted, unique), decoding only the packets they depend on.

    Every frame the decoder outputs is checked against the demuxed time stamps: after a
    (re)start at a keyframe the frames must come out as consecutive indices; anything else
    raises :class:`_Fallback` rather than risk returning a neighbouring frame."""
    packets, n = index.packets, len(index.packets)
    wanted = {int(i) for i in needed}
    got: dict[int, np.ndarray] = {}
    pos, flushed, sent, seeks = 0, False, 0, 0
    expect, first_pts = 0, int(index.pts[0])
    for i in needed:
        i = int(i)
        k = int(index.start[i])
        if k - pos >= max(min_gap, 1):
            ctx.flush_buffers()
            pos = k
            first_pts = int(packets[k].pts)
            expect = index.rank[first_pts]
            seeks += 1
        while i not in got:
            if pos < n:
                frames = ctx.decode(packets[pos])
                pos += 1
                sent += 1
            elif not flushed:
                frames = ctx.decode(None)
                flushed = True
            else:
                raise _Fallback("frame_missing")
            for f in frames:
                if f.pts is None:
                    raise _Fallback("frame_without_pts")
                if f.pts < first_pts:
                    continue  # a leading frame of an open GOP we started in; not needed here
                if index.rank.get(int(f.pts)) != expect:
                    raise _Fallback("pts_mismatch")
                if expect in wanted and expect not in got:
                    got[expect] = f.to_ndarray(format="rgb24")
                expect += 1
    stats.seeks += seeks  # counted for the videos that succeed only
    stats.packets_decoded += sent
    return got


def _check_indices(idx: Sequence[int], n: int) -> np.ndarray:
    arr = np.asarray(idx, np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"choose: expected frame indices in [0, {n}), got {arr.min()}.."
                         f"{arr.max()}")
    return arr


def _decode_all(data: bytes, choose: Callable[[int], Sequence[int]],
                known: tuple[int, np.ndarray] | None = None
                ) -> tuple[list[np.ndarray], int, float]:
    """The reference path: decode every frame in order, count them, then pick.

    ``known = (n, idx)``: indices already chosen for ``n`` frames, reused when the full decode
    counts the same ``n`` (a late fallback does not draw the random sampling twice)."""
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
    if known is not None and known[0] == len(frames):
        idx = known[1]
    else:
        idx = _check_indices(choose(len(frames)), len(frames))
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in idx.tolist():
        if i not in cache:
            cache[i] = frames[i].to_ndarray(format="rgb24")
        out.append(cache[i])
    return out, len(frames), fps


def decode_video(data: bytes, choose: Callable[[int], Sequence[int]], *, sparse: bool = True,
                 min_gap: int = SEEK_MIN_GAP, stats: DecodeStats | None = None
                 ) -> tuple[list[np.ndarray], int, float]:
    """Decode the frames picked by ``choose(num_frames)`` from an encoded video (any
    container/codec PyAV reads, from the bytes in memory) as RGB uint8 ``[H, W, 3]``.

    The frames are exactly those of decoding the whole video and indexing the decoded list
    (``sparse=False`` does just that), but only the packets they need go to the decoder:

    - **Frame count without decoding.** One demux pass (packets only, no decoding) gives every
      packet's time stamp and keyframe flag. The frame count is the number of packets, used
      only when the packets look like one frame each: every packet has a time stamp, no two
      share one, none is empty or flagged discard/corrupt, the first is a keyframe shown
      first, a codec with B-frames has time stamps out of decode order (AVI makes them up),
      and the header's frame count (``stream.frames``, 0 in WebM) agrees when it is set;
      else the video is decoded in full. ``duration * rate`` is never used: it is rounded
      (WebM stores milliseconds) and one frame off moves every sampled index. What these
      checks cannot see is a packet that yields no frame in a part never decoded; the
      decoded parts are checked (below), and no such packet turned up in WebM, MP4, MKV,
      MPEG-TS, AVI, MOV or IVF with VP8, VP9, AV1, H.264, HEVC, MPEG-2, MPEG-4 or MJPEG.
    - **Stop after the last needed frame**; no frame that is not sampled is converted to RGB.
    - **Jump to the keyframe before a needed frame** (flush the decoder, go on from that
      keyframe's packet: a seek inside the demuxed packets, so it needs no container index
      and works on WebM without cues) when it skips ``>= min_gap`` packets, and only for
      codecs in :data:`SEEK_CODECS`. What a jump saves is the ``k - pos`` packets between
      the packet last sent and that keyframe; what it costs is a flush (the decoder's
      threads finish and drop the frames they have in flight) and a refill of its frame
      pipeline, latency more than work. On 60 s clips (128 px, 12 fps, a keyframe every 24
      frames, VP9/WebM and H.264/MP4, 2 cores) ``benchmarks/bench_decode_seek.py`` measured
      the same CPU time for thresholds from 1 to 16 packets and 1.3-1.5x more at 32 with 16
      segments (past the keyframe interval, jumps that paid were skipped).
      :data:`SEEK_MIN_GAP` = 8 still jumps over a third of such a GOP, and spares the flush
      and refill for a handful of packets, whose latency grows with the decoder's thread
      count (not measured beyond 2).
    - **Checked, with a fallback.** Each decoded frame's time stamp must be the next expected
      one; when it is not, or the packets cannot stand for frames (above), the video is
      decoded in full as before. Each fallback is counted per reason in ``stats`` and
      logged (a warning when the decoder disagreed with the packets, else DEBUG). Corrupt
      data past the last needed frame is not decoded, so such a video now yields its good
      frames instead of being skipped.

    Returns:
        ``(frames in the order of the chosen indices, number of frames, fps)``.

    Raises:
        CorruptSample: no video stream, or no decodable frame.
        ValueError: ``choose`` returned an index outside ``[0, number of frames)``.
    """
    import av

    stats = stats if stats is not None else DecodeStats()
    stats.videos += 1
    if not sparse:
        return _decode_all(data, choose)
    try:
        container = av.open(io.BytesIO(data))
    except Exception as exn:  # av.error.*, OSError, ValueError
        raise CorruptSample("corrupt_video", repr(exn)) from exn
    with container:
        if not container.streams.video:
            raise CorruptSample("corrupt_video", "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        ctx = stream.codec_context
        try:
            index = _index_packets(container, stream, ctx.name in SEEK_CODECS,
                                   bool(ctx.has_b_frames))
        except _Fallback as why:
            return _fallback(data, choose, None, str(why), stats)
        n = len(index.packets)
        idx = _check_indices(choose(n), n)
        try:
            got = _decode_sparse(ctx, index, np.unique(idx), min_gap, stats)
        except _Fallback as why:
            return _fallback(data, choose, (n, idx), str(why), stats)
        except Exception as exn:  # av.error.* while decoding: the full decode decides
            return _fallback(data, choose, (n, idx), f"decode_error:{type(exn).__name__}",
                             stats)
    stats.sparse += 1
    stats.packets_total += n
    return [got[i] for i in idx.tolist()], n, fps


def _fallback(data: bytes, choose: Callable[[int], Sequence[int]],
              known: tuple[int, np.ndarray] | None, reason: str, stats: DecodeStats
              ) -> tuple[list[np.ndarray], int, float]:
    if reason in _DECODER_DISAGREES:  # rare, and worth knowing: the demuxer misled us
        log.warning("video decoded in full (right frames, only slower): %s", reason)
    else:  # a container or stream without usable time stamps: expected for some formats
        log.debug("video decoded in full (%s)", reason)
    stats.fallbacks[reason] = stats.fallbacks.get(reason, 0) + 1
    return _decode_all(data, choose, known)

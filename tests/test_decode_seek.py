"""Sparse video decoding (issue 36 item 3): the frames equal the full decode's, bit for bit."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from dyreg_pyg.data import decode as dec
from dyreg_pyg.data.decode import DecodeStats, decode_video
from dyreg_pyg.data.transforms import eval_indices, train_indices

av = pytest.importorskip("av")

N = 40  # frames per test video


def _encode(fmt: str, codec: str, gop: int, options: dict | None = None) -> bytes:
    """A 40-frame 48x32 clip whose frames all differ (a bar moves, the frame number is in the
    pixels), a keyframe every ``gop`` frames."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=12, options=options or {})
        s.width, s.height, s.pix_fmt, s.gop_size = 48, 32, "yuv420p", gop
        for i in range(N):
            img = np.zeros((32, 48, 3), np.uint8)
            img[:, (i * 5) % 48] = 255
            img[(i * 3) % 32, :, 1] = 200
            img[-4:, :, 2] = 6 * i
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def videos() -> dict[str, bytes]:
    return {
        "vp9_webm": _encode("webm", "libvpx-vp9", 6, {"auto-alt-ref": "1", "lag-in-frames": "8"}),
        "h264_mp4_bframes": _encode("mp4", "libx264", 8, {"bf": "3"}),
        "h264_mkv_open_gop": _encode("matroska", "libx264", 8,
                                     {"x264-params": "open-gop=1:keyint=8:bframes=3"}),
    }


INDEX_SETS = [
    [0], [N - 1], [0, N - 1], [7, 7, 7], [1, 20, 39], [39, 0, 20, 20, 3],
    list(range(N)), [5, 6, 30, 31, 32], [N - 1, N - 1],
]


def _full(data: bytes, idx: list[int]) -> tuple[list[np.ndarray], int, float]:
    return decode_video(data, lambda n: idx, sparse=False)


@pytest.mark.parametrize("name", ["vp9_webm", "h264_mp4_bframes", "h264_mkv_open_gop"])
@pytest.mark.parametrize("min_gap", [1, dec.SEEK_MIN_GAP])
def test_sparse_frames_equal_full_decode(videos, name, min_gap):
    data = videos[name]
    ref_all, n, fps = _full(data, list(range(N)))
    assert n == N and fps == 12.0
    # Every frame differs from the next, so an off-by-one cannot pass.
    assert all(not np.array_equal(a, b) for a, b in zip(ref_all, ref_all[1:]))
    stats = DecodeStats()
    sets = INDEX_SETS + [train_indices(N, 8, np.random.default_rng(s)).tolist()
                         for s in range(3)] + eval_indices(N, 16, 2).tolist()
    for idx in sets:
        frames, n2, fps2 = decode_video(data, lambda n, idx=idx: idx, min_gap=min_gap,
                                        stats=stats)
        assert (n2, fps2) == (N, 12.0)
        assert len(frames) == len(idx)
        for i, f in zip(idx, frames):
            assert f.dtype == np.uint8 and np.array_equal(f, ref_all[i]), (name, idx, i)
    assert stats.fallbacks == {} and stats.sparse == len(sets)
    assert stats.packets_decoded < stats.packets_total  # [0], [0, 1]...: stops early
    if min_gap == 1:
        assert stats.seeks > 0  # [N - 1] jumps to the last keyframe


def test_webm_without_header_frame_count(videos):
    data = videos["vp9_webm"]
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].frames == 0  # WebM does not store it
    seen = []
    stats = DecodeStats()
    frames, n, _ = decode_video(data, lambda n: seen.append(n) or [n - 1], stats=stats)
    assert seen == [N] and n == N and stats.fallbacks == {}
    # The last frame alone: only the packets from the last keyframe on are decoded.
    assert stats.packets_decoded <= 6 + 1
    assert np.array_equal(frames[0], _full(data, [N - 1])[0][0])


def test_stream_without_pts_falls_back_to_full_decode():
    data = _encode("h264", "libx264", 8)  # raw Annex B stream: no time stamps
    stats = DecodeStats()
    calls = []
    frames, n, _ = decode_video(data, lambda n: calls.append(n) or [3, n - 1], stats=stats)
    assert stats.fallbacks == {"no_pts": 1} and stats.sparse == 0 and calls == [N]
    ref, _, _ = _full(data, [3, N - 1])
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref))


class _DroppingDecoder:
    """Stands for a decoder that outputs no frame for the packets shown at ``drop`` pts."""

    def __init__(self, ctx, drop):
        self.ctx, self.drop = ctx, drop

    def flush_buffers(self):
        self.ctx.flush_buffers()

    def decode(self, packet):
        return [f for f in self.ctx.decode(packet) if f.pts not in self.drop]


@pytest.mark.parametrize("lost, idx, reason", [
    (10, [0, 20], "pts_mismatch"),  # a frame lost inside the decoded range (no jump)
    (N - 1, [2, N - 1], "frame_missing"),  # the last frame never comes out
])
def test_lost_frame_is_caught_and_decoded_in_full(videos, monkeypatch, caplog, lost, idx,
                                                   reason):
    """The sparse path checks each decoded frame's time stamp: a lost frame must not shift
    the returned frames; the video is decoded in full instead, and counted."""
    data = videos["h264_mp4_bframes"]
    with av.open(io.BytesIO(data)) as c:
        pts = sorted(p.pts for p in c.demux(video=0) if p.size)
    real = dec._decode_sparse
    monkeypatch.setattr(dec, "_decode_sparse", lambda ctx, *a: real(
        _DroppingDecoder(ctx, {pts[lost]}), *a))
    stats = DecodeStats()
    calls = []
    frames, n, _ = decode_video(data, lambda n: calls.append(n) or idx, stats=stats,
                                min_gap=10**6)
    assert stats.fallbacks == {reason: 1} and stats.sparse == 0
    assert calls == [N] and n == N  # the full decode agrees on N: the sampling is not redrawn
    assert f"video decoded in full (right frames, only slower): {reason}" in caplog.text
    ref, _, _ = _full(data, idx)
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref))


def _pkt(pts, key=False, discard=False, size=10):
    return SimpleNamespace(pts=pts, is_keyframe=key, is_discard=discard, is_corrupt=False,
                           size=size)


@pytest.mark.parametrize("packets, frames, reason", [
    ([], 0, "no_packets"),
    ([_pkt(0, True), _pkt(1, size=0), _pkt(2)], 0, "empty_packets"),
    ([_pkt(0, True), _pkt(None)], 0, "no_pts"),
    ([_pkt(0, True), _pkt(1, discard=True)], 0, "discard_or_corrupt_packets"),
    ([_pkt(0, True), _pkt(1), _pkt(1)], 0, "duplicate_pts"),
    ([_pkt(0), _pkt(1, True)], 0, "no_leading_keyframe"),
    ([_pkt(1, True), _pkt(0)], 0, "no_leading_keyframe"),
    ([_pkt(0, True), _pkt(1), _pkt(2)], 4, "frame_count_mismatch"),
    ([_pkt(0, True), _pkt(1), _pkt(2)], 0, "pts_in_decode_order"),  # a B-frame codec
])
def test_index_refuses_packets_that_are_not_one_frame_each(packets, frames, reason):
    container = SimpleNamespace(demux=lambda stream: iter(packets + [_pkt(None, size=0)]))
    with pytest.raises(dec._Fallback, match=reason):
        dec._index_packets(container, SimpleNamespace(frames=frames), True,
                           reorders=reason == "pts_in_decode_order")


def test_avi_h264_bframes_time_stamps_are_not_trusted():
    """AVI makes the time stamps of a B-frame stream up from the decode order: the frames
    cannot be ranked by them, so such a video is decoded in full, without a warning."""
    data = _encode("avi", "libx264", 8, {"bf": "2"})
    with av.open(io.BytesIO(data)) as c:
        st = c.streams.video[0]
        assert st.codec_context.has_b_frames
        shown = [f.pts for f in c.decode(st)]
    assert shown != sorted(shown)  # the B-frames do come out of decode order
    stats = DecodeStats()
    frames, n, _ = decode_video(data, lambda n: [0, 9, 30], stats=stats, min_gap=1)
    assert stats.fallbacks == {"pts_in_decode_order": 1} and n == N
    ref, _, _ = _full(data, [0, 9, 30])
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref))


def test_index_start_points_skip_open_gop_leading_frames():
    # decode order: I0 P3 B1 B2 | I6(key, open GOP) B4 B5 P9 B7 B8
    order = [(0, True), (3, False), (1, False), (2, False), (6, True), (4, False), (5, False),
             (9, False), (7, False), (8, False)]
    container = SimpleNamespace(demux=lambda s: iter([_pkt(t, k) for t, k in order]))
    index = dec._index_packets(container, SimpleNamespace(frames=10), True)
    assert index.pts.tolist() == list(range(10))
    # frames 4 and 5 are shown before keyframe 6 (decode position 4): start at position 0.
    assert index.start.tolist() == [0, 0, 0, 0, 0, 0, 4, 4, 4, 4]
    plain = dec._index_packets(container, SimpleNamespace(frames=0), False)
    assert plain.start.tolist() == [0] * 10


def test_bad_indices_name_the_range(videos):
    with pytest.raises(ValueError, match=r"expected frame indices in \[0, 40\), got 0..40"):
        decode_video(videos["vp9_webm"], lambda n: [0, n])

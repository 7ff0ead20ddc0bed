"""Decoding only the sampled frames of a video (``decode_video``) against decoding all of it.

    python benchmarks/bench_decode_seek.py [--size 128] [--long-seconds 60] [--reps 9]
        [--json benchmarks/results/bench_decode_seek.json]

Generates in memory (nothing is written but the JSON) a long clip (``--long-seconds`` s, 12 fps,
a keyframe every 2 s) and an SSv2-length clip (4 s, 12 fps, the encoder's default keyframe
interval, i.e. FFmpeg's 12 frames), each as VP9 in WebM (what SSv2 ships) and as H.264 in MP4,
``--size`` px square, moving bars on noise so that every frame costs real decoding.

For each clip and the loader's samplings (``train_indices`` / ``eval_indices`` with 8 and 16
segments; ``val`` = one centred clip, ``test2`` = TSM's two clips), in interleaved rounds on the
same bytes and the same indices: ``full`` is ``decode_video(..., sparse=False)`` (the previous
implementation: decode every frame, then pick), ``sparse`` the default. The frames are checked
equal bit for bit. Prints median milliseconds per video (wall), the ratios full / sparse of the
wall and of the process CPU time (all threads; steadier on a shared machine) and the share
of packets sent to the decoder; then, on the long clips, the sparse time for several
``min_gap`` values (the jump threshold, ``SEEK_MIN_GAP``). Writes everything, with the machine,
the versions and the thread settings, to ``--json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dyreg_pyg.data.decode import SEEK_MIN_GAP, DecodeStats, decode_video  # noqa: E402
from dyreg_pyg.data.transforms import eval_indices, train_indices  # noqa: E402

FPS = 12


def make_clip(fmt: str, codec: str, seconds: float, size: tuple[int, int], gop: int | None
              ) -> bytes:
    """An encoded ``size = (W, H)`` clip of moving bars on noise; ``gop=None``: the encoder's
    default keyframe interval."""
    w, h = size
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, (h, w, 3), np.uint8)
    opts = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {
        "preset": "veryfast"}
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=FPS, options=opts)
        s.width, s.height = w, h
        s.pix_fmt = "yuv420p"
        if gop is not None:
            s.gop_size = gop
        for i in range(round(seconds * FPS)):
            img = np.roll(noise, i, axis=1).copy()
            img[:, (3 * i) % w] = 255
            img[(2 * i) % h, :, 1] = 200
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return buf.getvalue()


def samplings(n: int, segments: int, reps: int) -> dict[str, list[list[int]]]:
    """Index lists per sampling, one per repetition (train draws a new one each time)."""
    return {
        "train": [train_indices(n, segments, np.random.default_rng(r)).tolist()
                  for r in range(reps)],
        "val": [eval_indices(n, segments, 1)[0].tolist()] * reps,
        "test2": [eval_indices(n, segments, 2).reshape(-1).tolist()] * reps,
    }


def time_decode(data: bytes, idx: list[int], **kw) -> tuple[float, float, list[np.ndarray]]:
    """(wall seconds, CPU seconds of the process, all threads, frames)."""
    c0, t0 = time.process_time(), time.perf_counter()
    frames, _, _ = decode_video(data, lambda n: idx, **kw)
    return time.perf_counter() - t0, time.process_time() - c0, frames


def bench_clip(name: str, data: bytes, n: int, reps: int) -> list[dict]:
    rows = []
    for segments in (8, 16):
        for mode, idx_list in samplings(n, segments, reps).items():
            full_t, sparse_t, full_c, sparse_c, stats = [], [], [], [], DecodeStats()
            for r, idx in enumerate(idx_list):  # interleaved rounds, alternating who goes first
                if r % 2:
                    ts, cs, got = time_decode(data, idx, stats=stats)
                tf, cf, ref = time_decode(data, idx, sparse=False)
                if not r % 2:
                    ts, cs, got = time_decode(data, idx, stats=stats)
                if not all(np.array_equal(a, b) for a, b in zip(ref, got)):
                    raise SystemExit(f"{name} {mode} {segments}: frames differ at {idx}")
                full_t.append(tf)
                sparse_t.append(ts)
                full_c.append(cf)
                sparse_c.append(cs)
            mf, ms = statistics.median(full_t), statistics.median(sparse_t)
            cf, cs = statistics.median(full_c), statistics.median(sparse_c)
            rows.append({
                "clip": name, "frames": n, "segments": segments, "sampling": mode,
                "full_ms": round(1e3 * mf, 2), "sparse_ms": round(1e3 * ms, 2),
                "ratio": round(mf / ms, 2), "full_cpu_ms": round(1e3 * cf, 2),
                "sparse_cpu_ms": round(1e3 * cs, 2), "cpu_ratio": round(cf / cs, 2),
                "packets_decoded": round(stats.packets_decoded / max(stats.packets_total, 1), 3),
                "seeks_per_video": round(stats.seeks / len(idx_list), 2),
                "fallbacks": stats.fallbacks,
            })
            r = rows[-1]
            print(f"{name:<16} {n:>4} {segments:>3} {mode:<6} {r['full_ms']:>9.1f} "
                  f"{r['sparse_ms']:>9.1f} {r['ratio']:>6.2f} {r['cpu_ratio']:>6.2f} "
                  f"{r['packets_decoded']:>8.2f} "
                  f"{r['seeks_per_video']:>6.1f} {r['fallbacks'] or ''}", flush=True)
    return rows


def bench_gaps(name: str, data: bytes, n: int, reps: int) -> list[dict]:
    rows = []
    gaps = [1, 2, 4, 8, 16, 32, 10**9]
    for segments in (8, 16):
        idx_list = samplings(n, segments, reps)["train"]
        wall: dict[int, list[float]] = {g: [] for g in gaps}
        cpu: dict[int, list[float]] = {g: [] for g in gaps}
        for idx in idx_list:
            for g in gaps:
                tw, tc, _ = time_decode(data, idx, min_gap=g)
                wall[g].append(tw)
                cpu[g].append(tc)
        key = {g: "none" if g == 10**9 else str(g) for g in gaps}
        row = {"clip": name, "segments": segments, "sampling": "train",
               "sparse_ms_by_min_gap": {key[g]: round(1e3 * statistics.median(t), 2)
                                        for g, t in wall.items()},
               "sparse_cpu_ms_by_min_gap": {key[g]: round(1e3 * statistics.median(t), 2)
                                            for g, t in cpu.items()}}
        rows.append(row)
        for what in ("sparse_ms_by_min_gap", "sparse_cpu_ms_by_min_gap"):
            print(f"{name:<16} {segments:>3} {what[7:10]:<5}" + "  ".join(
                f"{k}:{v:.1f}" for k, v in row[what].items()), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--long-seconds", type=float, default=60.0)
    ap.add_argument("--short-seconds", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=9, help="rounds per row (train: one draw each); "
                    "3x as many on the short clips")
    ap.add_argument("--ssv2-size", default="426x240",
                    help="WxH of an extra VP9 SSv2-length clip at SSv2's own size ('' = none)")
    ap.add_argument("--json", type=Path,
                    default=Path(__file__).parent / "results" / "bench_decode_seek.json")
    args = ap.parse_args()

    clips = {}
    sq = (args.size, args.size)
    todo = [(f"{label}_{tag}", fmt, codec, seconds, sq, gop)
            for label, seconds, gop in (("long", args.long_seconds, 2 * FPS),
                                        ("ssv2", args.short_seconds, None))
            for tag, fmt, codec in (("vp9_webm", "webm", "libvpx-vp9"),
                                    ("h264_mp4", "mp4", "libx264"))]
    if args.ssv2_size:
        wh = tuple(int(v) for v in args.ssv2_size.lower().split("x"))
        todo.append((f"ssv2_{wh[1]}p_vp9_webm", "webm", "libvpx-vp9", args.short_seconds, wh,
                     None))
    for name, fmt, codec, seconds, size, gop in todo:
        data = make_clip(fmt, codec, seconds, size, gop)
        with av.open(io.BytesIO(data)) as c:
            st = c.streams.video[0]
            header = int(st.frames)
            keys = sum(p.is_keyframe for p in c.demux(st) if p.size)
        clips[name] = (data, round(seconds * FPS), header, keys)

    with av.open(io.BytesIO(clips["long_vp9_webm"][0])) as c:
        ctx = c.streams.video[0].codec_context
        ctx.thread_type = "AUTO"
        threads = {"codec_thread_type": "AUTO", "codec_thread_count": ctx.thread_count}
    info = {
        "machine": platform.machine(), "processor": platform.processor(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch_threads": torch.get_num_threads(), **threads,
        "size": args.size, "ssv2_size": args.ssv2_size, "fps": FPS, "reps": args.reps,
        "SEEK_MIN_GAP": SEEK_MIN_GAP,
        "clips": {k: {"frames": v[1], "bytes": len(v[0]), "header_frames": v[2],
                      "keyframes": v[3]} for k, v in clips.items()},
    }
    print(json.dumps(info))
    print(f"{'clip':<16} {'n':>4} {'seg':>3} {'mode':<6} {'full ms':>9} {'sparse ms':>9} "
          f"{'ratio':>6} {'cpu':>6} {'decoded':>8} {'seeks':>6}")
    rows = []
    for name, (data, n, _, _) in clips.items():
        rows += bench_clip(name, data, n, args.reps if name.startswith("long") else 3 * args.reps)
    print("sparse, train sampling: ms (wall / CPU) by min_gap (jump when it skips >= min_gap "
          "packets; none = never jump)")
    gaps = []
    for name, (data, n, _, _) in clips.items():
        if name.startswith("long"):
            gaps += bench_gaps(name, data, n, args.reps)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"info": info, "rows": rows, "min_gap": gaps}, indent=1)
                         + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

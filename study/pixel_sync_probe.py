"""Do DyReg's nodes, pooled from the frames, carry what the graph needs to detect synchrony?

``study/gnn_sync_probe.py`` shows the DyReg graph stack detects which digits move in sync
when it is given their true positions. This probe gives it what it gets inside the video
model instead: a ResNet-18 (timm, from scratch, 1 channel) run up to ``layer2`` (128 channels,
8 x 8 map at stride 8 for 64 x 64 frames, where the graph sits in ``syncmnist_r18_*``), nodes
pooled by :class:`~dyreg_pyg.DyRegGNN` from the true digit boxes (``regions="external"``,
N = 5: node k = digit k) plus the kernel position embedding, K = 3 graph iterations - and asks
the same per-node question: is this digit in the in-sync group? A linear head reads each
node's state in the last frame (:meth:`~dyreg_pyg.DyRegGNN.node_states`), so the answer does
not have to travel back through the feature map and the 56-way label.

Variants, side by side on the same videos, steps and seeds:

* ``pooled+pos``: the paper's nodes (pooled features + position embedding of the kernel);
* ``pooled``: without the position embedding (position only through the features).

A node that cannot see the others gets about 58 % (the no-messages control of
``gnn_sync_probe.py``); 99.99 % is what the graph reaches from true positions.

    python study/pixel_sync_probe.py --train 20000 --val 2000 --steps 1500 \\
        --variants pooled+pos --threads 1

The reduced task of issue 15 item 5 (two digits, in sync half the time; one bit per video,
"does anything move in sync", read by a head on the mean of the last frame's node states),
with the position embedding read from the regions' numbers and made louder:

    python study/pixel_sync_probe.py --task anysync --variant single --digits 2 \\
        --p-no-sync 0.5 --pos-input region --pos-scale 10 --variants pooled+pos
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import timm
import torch
from torch import Tensor, nn

from dyreg_pyg import DyRegGNN
from dyreg_pyg.data.syncmnist import SyncMNISTConfig, generate_video, load_digit_pool
from train.data import batch_object_boxes

log = logging.getLogger("pixel_sync_probe")

VARIANTS = {"pooled+pos": True, "pooled": False}


def make_clips(num: int, seed: int, split: str = "train", cfg: SyncMNISTConfig | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Clips of ``cfg`` (default: MultiSyncMNIST of the demo geometry) as uint8
    ``[num, T, 1, 64, 64]``, the true boxes as regions ``[num, T, N, 4]`` and the in-sync
    flags ``[num, N]`` (``N = cfg.digits``)."""
    cfg = SyncMNISTConfig() if cfg is None else cfg
    pool = load_digit_pool(split)
    frames, metas, flags = [], [], []
    for i in range(num):
        f, _, meta = generate_video(cfg, pool, np.random.default_rng([seed, i]))
        frames.append(f)
        metas.append(meta)
        flags.append(meta["in_sync"])
    video = torch.from_numpy(np.stack(frames)).unsqueeze(2)
    boxes, mask = batch_object_boxes({"video": video[:1], "meta": metas})
    if boxes is None or not bool(mask.all()):
        raise RuntimeError("generated clips without a box for every digit and frame")
    return video, boxes, torch.tensor(flags, dtype=torch.float32)


class PixelSyncProbe(nn.Module):
    """Frames ``[B, T, 1, H, W]`` and digit boxes ``[B, T, N, 4]`` -> per-digit in-sync logits
    ``[B, N]`` (or, with ``video_head``, one "does anything move in sync" logit ``[B, 1]``):
    ResNet-18 up to ``layer2``, DyRegGNN nodes on the boxes, a linear head on the last frame's
    node states (``video_head``: on their mean over the nodes).

    Args:
        position_embedding: add the kernel position embedding to the pooled nodes.
        node_channels, iterations: as in the ``syncmnist_r18_*`` presets (64, 3).
        num_nodes: digits per clip (5: MultiSyncMNIST).
        position_scale: ``DyRegConfig.position_scale`` (1: the paper).
        position_input: ``DyRegConfig.position_input`` (``"kernel"``: the paper).
        video_head: one answer per video instead of one per node.
    """

    def __init__(self, position_embedding: bool = True, node_channels: int = 64,
                 iterations: int = 3, num_nodes: int = 5, position_scale: float = 1.0,
                 video_head: bool = False, position_input: str = "kernel") -> None:
        super().__init__()
        self.backbone = timm.create_model("resnet18", pretrained=False, in_chans=1,
                                          features_only=True, out_indices=(2,))
        channels = self.backbone.feature_info.channels()[-1]
        extra = {"position_scale": position_scale, "position_input": position_input} \
            if position_embedding else {}
        self.gnn = DyRegGNN(channels, node_channels, num_nodes=num_nodes, regions="external",
                            iterations=iterations, share_weights=True, spatial_size=(8, 8),
                            position_embedding=position_embedding, **extra)
        self.head = nn.Linear(node_channels, 1)
        self.video_head = video_head

    def forward(self, clip: Tensor, boxes: Tensor) -> Tensor:
        b, t = clip.shape[:2]
        feats = self.backbone(clip.flatten(0, 1))[-1]
        feats = feats.view(b, t, *feats.shape[1:])
        last = self.gnn.node_states(feats, boxes)[:, -1]  # [B, N, C]
        # the video head: one "node" (the mean of all), so the answer is [B, 1]
        return self.head(last.mean(1, keepdim=True) if self.video_head else last).squeeze(-1)


def _normalise(video: Tensor) -> Tensor:
    return (video.float() / 255 - 0.5) / 0.5


def train_probe(model: PixelSyncProbe, data: tuple[Tensor, Tensor, Tensor],
                val: tuple[Tensor, Tensor, Tensor], steps: int, batch_size: int, lr: float,
                seed: int, eval_every: int = 0) -> dict[str, object]:
    """Adam with a one-cycle schedule; returns validation node / video accuracy and, with
    ``eval_every``, the node-accuracy curve ``{videos seen: accuracy}``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    video, boxes, flags = data

    def evaluate() -> dict[str, float]:
        model.eval()
        hits = []
        with torch.no_grad():
            for i in range(0, len(val[0]), 100):
                out = model(_normalise(val[0][i:i + 100]), val[1][i:i + 100])
                hits.append((out > 0).float() == val[2][i:i + 100])
        model.train()
        hit = torch.cat(hits)
        return {"node_acc": float(hit.float().mean()),
                "video_acc": float(hit.all(1).float().mean())}

    curve: dict[int, float] = {}
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(video), (batch_size,), generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(_normalise(video[idx]), boxes[idx]), flags[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if eval_every and step % eval_every == 0 and step < steps:
            curve[step * batch_size] = evaluate()["node_acc"]
            log.info("%d videos: node accuracy %.4f, loss %.4f", step * batch_size,
                     curve[step * batch_size], loss.item())
    seconds = time.time() - t0
    result: dict[str, object] = {**evaluate(), "train_loss": loss.item(),
                                 "videos_per_s": steps * batch_size / seconds}
    curve[steps * batch_size] = result["node_acc"]
    result["curve"] = curve
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--train", type=int, default=20_000, help="training videos")
    ap.add_argument("--val", type=int, default=2_000, help="validation videos")
    ap.add_argument("--steps", type=int, default=1_500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250, help="steps between validations")
    ap.add_argument("--task", choices=("sync", "anysync"), default="sync",
                    help="sync: per node, is this digit in sync; anysync: one bit per video, "
                         "does anything move in sync (read from the mean node state)")
    ap.add_argument("--variant", default=None, choices=("multi", "single"),
                    help="SyncMNISTConfig.variant (default multi)")
    ap.add_argument("--digits", type=int, default=None, help="digits per video (default 5)")
    ap.add_argument("--p-no-sync", type=float, default=None,
                    help="SyncMNISTConfig.p_no_sync: share of videos where nothing is in sync")
    ap.add_argument("--pos-scale", type=float, default=1.0,
                    help="DyRegConfig.position_scale of the position embedding (1: the paper)")
    ap.add_argument("--pos-input", choices=("kernel", "region"), default="kernel",
                    help="DyRegConfig.position_input of the position embedding")
    ap.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    if "pooled" in variants and (args.pos_scale != 1.0 or args.pos_input != "kernel"):
        raise SystemExit("--pos-scale/--pos-input: the 'pooled' variant has no position "
                         "embedding; run it separately, without them")
    t0 = time.time()
    cfg = SyncMNISTConfig.from_geometry("demo", variant=args.variant, digits=args.digits,
                                        p_no_sync=args.p_no_sync)
    data = make_clips(args.train, args.seed, cfg=cfg)
    val = make_clips(args.val, 7919, split="val", cfg=cfg)
    if args.task == "anysync":  # one bit per video: does anything move in sync
        data, val = ((*d[:2], d[2].amax(1, keepdim=True)) for d in (data, val))
    log.info("%d + %d clips in %.0f s; positive share (val) %.3f", args.train, args.val,
             time.time() - t0, float(val[2].mean()))
    results = {}
    for name in variants:
        torch.manual_seed(args.seed)
        model = PixelSyncProbe(VARIANTS[name], num_nodes=cfg.digits,
                               position_scale=args.pos_scale, video_head=args.task == "anysync",
                               position_input=args.pos_input)
        results[name] = train_probe(model, data, val, args.steps,
                                    args.batch_size, args.lr, args.seed, args.eval_every)
        log.info("%s: %s", name, results[name])
    print("| nodes | node accuracy % | video accuracy % | videos/s |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['node_acc']:.2f} | {100 * r['video_acc']:.2f} | "
              f"{r['videos_per_s']:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "config": asdict(cfg),
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main()

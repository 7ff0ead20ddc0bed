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
"""

from __future__ import annotations

import argparse
import json
import logging
import time
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


def make_clips(num: int, seed: int, split: str = "train") -> tuple[Tensor, Tensor, Tensor]:
    """MultiSyncMNIST clips uint8 ``[num, T, 1, 64, 64]``, true boxes as regions
    ``[num, T, 5, 4]`` and in-sync flags ``[num, 5]``."""
    cfg = SyncMNISTConfig()
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
    """Frames ``[B, T, 1, H, W]`` and digit boxes ``[B, T, 5, 4]`` -> per-digit in-sync logits
    ``[B, 5]``: ResNet-18 up to ``layer2``, DyRegGNN nodes on the boxes, a linear head.

    Args:
        position_embedding: add the kernel position embedding to the pooled nodes.
        node_channels, iterations: as in the ``syncmnist_r18_*`` presets (64, 3).
    """

    def __init__(self, position_embedding: bool = True, node_channels: int = 64,
                 iterations: int = 3) -> None:
        super().__init__()
        self.backbone = timm.create_model("resnet18", pretrained=False, in_chans=1,
                                          features_only=True, out_indices=(2,))
        channels = self.backbone.feature_info.channels()[-1]
        self.gnn = DyRegGNN(channels, node_channels, num_nodes=5, regions="external",
                            iterations=iterations, share_weights=True, spatial_size=(8, 8),
                            position_embedding=position_embedding)
        self.head = nn.Linear(node_channels, 1)

    def forward(self, clip: Tensor, boxes: Tensor) -> Tensor:
        b, t = clip.shape[:2]
        feats = self.backbone(clip.flatten(0, 1))[-1]
        feats = feats.view(b, t, *feats.shape[1:])
        nodes = self.gnn.node_states(feats, boxes)  # [B, T, 5, C]
        return self.head(nodes[:, -1]).squeeze(-1)


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
    ap.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    t0 = time.time()
    data = make_clips(args.train, args.seed)
    val = make_clips(args.val, 7919, split="val")
    log.info("%d + %d clips in %.0f s", args.train, args.val, time.time() - t0)
    results = {}
    for name in variants:
        torch.manual_seed(args.seed)
        results[name] = train_probe(PixelSyncProbe(VARIANTS[name]), data, val, args.steps,
                                    args.batch_size, args.lr, args.seed, args.eval_every)
        log.info("%s: %s", name, results[name])
    print("| nodes | node accuracy % | video accuracy % | videos/s |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['node_acc']:.2f} | {100 * r['video_acc']:.2f} | "
              f"{r['videos_per_s']:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()

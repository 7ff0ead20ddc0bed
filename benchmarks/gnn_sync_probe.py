"""Can the DyReg graph (RSTG spatial messages + GRU temporal updates) detect synchrony at all?

A diagnostic without images: each MultiSyncMNIST video becomes its 5 digits' true positions
``(x, y)`` over the 10 frames, one node per digit, and the task is to say which digits move
in sync (a per-node binary label, ``meta["in_sync"]``; about half the nodes are in sync). The
same graph stack as :class:`~dyreg_pyg.DyRegGNN` (K iterations of a spatial layer and the
temporal update, shared weights) reads an embedding of the positions; a linear head reads each
node's last state. Variants, side by side on the same data and steps:

* ``graph``: spatial messages between the nodes of a frame + GRU over time (DyReg's stack);
* ``no_messages``: the GRU alone - no node can see another, so this is the chance control.

    python benchmarks/gnn_sync_probe.py --train 20000 --val 2000 --steps 3000

Prints per-node accuracy, the accuracy of whole videos (every node right) and the ratio to
the control.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from torch import Tensor, nn

from dyreg_pyg.data.syncmnist import SyncMNISTConfig, generate_video, load_digit_pool
from dyreg_pyg.graph import frame_edge_index
from dyreg_pyg.nn import TemporalUpdate, make_spatial_layer

log = logging.getLogger("gnn_sync_probe")


def make_positions(num: int, seed: int) -> tuple[Tensor, Tensor]:
    """Positions ``[num, T, 5, 2]`` in ``[0, 1]`` and in-sync flags ``[num, 5]``."""
    cfg = SyncMNISTConfig()
    pool = load_digit_pool("train")
    pos, flags = [], []
    for i in range(num):
        _, _, meta = generate_video(cfg, pool, np.random.default_rng([seed, i]))
        pos.append(np.asarray(meta["positions"], np.float32) / (cfg.canvas - 28))
        flags.append(np.asarray(meta["in_sync"], np.float32))
    return torch.from_numpy(np.stack(pos)), torch.from_numpy(np.stack(flags))


class GraphProbe(nn.Module):
    """Positions ``[B, T, N, 2]`` -> per-node logits ``[B, N]`` through the DyReg graph stack.

    Args:
        channels: node width.
        iterations: K rounds of (spatial messages, temporal update), weights shared.
        messages: whether the spatial layer runs (``False``: the control).
    """

    def __init__(self, channels: int = 64, iterations: int = 3, messages: bool = True) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(2, channels), nn.ReLU(), nn.Linear(channels, channels))
        self.spatial = make_spatial_layer("rstg", channels) if messages else None
        self.temporal = TemporalUpdate(channels, "gru")
        self.head = nn.Linear(channels, 1)
        self.iterations = iterations

    def forward(self, pos: Tensor) -> Tensor:
        b, t, n, _ = pos.shape
        v = self.embed(pos).reshape(b * t * n, -1)
        edge_index = frame_edge_index(b * t, n, True, pos.device)
        for _ in range(self.iterations):
            if self.spatial is not None:
                v = self.spatial(v, edge_index)  # Eq. 8
            v = self.temporal(v.view(b, t, n, -1)).reshape(b * t * n, -1)  # Eq. 9
        return self.head(v.view(b, t, n, -1)[:, -1]).squeeze(-1)


def train_probe(model: nn.Module, data: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                steps: int, batch_size: int, lr: float, seed: int) -> dict[str, float]:
    """Adam with a one-cycle schedule; returns validation node and video accuracy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    pos, flags = data
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(pos), (batch_size,), generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(pos[idx]), flags[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        hit = (model(val[0]) > 0).float() == val[1]
    return {"node_acc": float(hit.float().mean()), "video_acc": float(hit.all(1).float().mean()),
            "train_loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20_000, help="training videos")
    ap.add_argument("--val", type=int, default=2_000, help="validation videos")
    ap.add_argument("--steps", type=int, default=3_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    data, val = make_positions(args.train, args.seed), make_positions(args.val, 7919)
    log.info("positions of %d + %d videos in %.0f s; in-sync share %.3f", args.train, args.val,
             time.time() - t0, float(val[1].mean()))
    results = {}
    for name, messages in (("graph", True), ("no_messages", False)):
        torch.manual_seed(args.seed)
        t0 = time.time()
        results[name] = train_probe(GraphProbe(messages=messages), data, val, args.steps,
                                    args.batch_size, args.lr, args.seed)
        log.info("%s: %s (%.0f s)", name, {k: round(v, 4) for k, v in results[name].items()},
                 time.time() - t0)
    g, c = results["graph"], results["no_messages"]
    print("| variant | node accuracy | video accuracy |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['node_acc']:.2f} | {100 * r['video_acc']:.2f} |")
    print(f"graph / no_messages: node accuracy x{g['node_acc'] / c['node_acc']:.2f}, "
          f"video accuracy x{g['video_acc'] / max(c['video_acc'], 1e-9):.2f}")


if __name__ == "__main__":
    main()

"""How loud is the motion in a DyReg node? Appearance part against position part.

A DyReg node is the region's pooled features (``proj_in(pool(x, K_i))``, Eq. 7) plus the
kernel's position embedding (``Linear(K_i)``, section 3.2). The graph probe
(``gnn_sync_probe.py``, docs/RESULTS.md "Reduced tasks") finds synchrony only where the
motion signal is not drowned by the appearance inputs; this measures, for each DyReg block of
a model, the mean norm of both parts over MultiSyncMNIST validation clips and of their change
from one frame to the next (for the position part: how far the regions move, seen by the
graph):

    python study/node_scale.py --checkpoint runs/demo/best.pt --videos 16
    python study/node_scale.py --checkpoint <study>/oracle-n2pos10/seed0/last.pt \
        --data <study>/data --videos 16

Without ``--checkpoint`` the model is a freshly initialised ``--preset``. The clips are
MultiSyncMNIST validation clips of the demo geometry, or with ``--data`` the first validation
clips of those shards (a study's own task; an oracle model gets their digit boxes).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dyreg_pyg import DyRegGNN
from dyreg_pyg.data.syncmnist import SyncMNISTConfig, generate_video, load_digit_pool
from dyreg_pyg.models import build_preset

log = logging.getLogger("node_scale")


def node_scales(model: nn.Module, clips: Tensor, frames: int, regions: Tensor | None = None
                ) -> dict[str, dict[str, float]]:
    """For each :class:`~dyreg_pyg.DyRegGNN` of ``model`` (by module name), the mean L2 norm
    of its nodes' appearance part and position-embedding part on ``clips`` (the model's
    input; ``regions``: the boxes of an external-regions model), and the mean norm of each
    part's change between consecutive frames."""
    parts: dict[str, dict[str, Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, DyRegGNN) and mod.pos_embed is not None:
            parts[name] = {}

            def keep(key: str, store: dict[str, Tensor]):
                return lambda _m, _i, out: store.__setitem__(key, out.detach().float())

            handles.append(mod.proj_in.register_forward_hook(keep("appearance", parts[name])))
            handles.append(mod.pos_embed.register_forward_hook(keep("position", parts[name])))
    if not parts:
        raise ValueError("model: no DyRegGNN with a position embedding in it")
    try:
        with torch.no_grad():
            model.eval()(clips, regions) if regions is not None else model.eval()(clips)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, p in parts.items():
        row = {}
        for key, v in p.items():  # [B*T, N, C]
            v = v.reshape(-1, frames, *v.shape[-2:])
            row[key] = float(v.norm(dim=-1).mean())
            row[f"{key}_change"] = float((v[:, 1:] - v[:, :-1]).norm(dim=-1).mean())
        out[name] = row
    return out


def syncmnist_clips(num: int, seed: int = 5, mean: float = 0.5, std: float = 0.5) -> Tensor:
    """``num`` MultiSyncMNIST validation clips of the demo geometry, normalised,
    ``[num, T, 1, 64, 64]``."""
    cfg, pool = SyncMNISTConfig(), load_digit_pool("val")
    vids = [generate_video(cfg, pool, np.random.default_rng([seed, i]))[0] for i in range(num)]
    x = torch.from_numpy(np.stack(vids)).float().div(255)
    return x.sub(mean).div(std).unsqueeze(2)


def shard_clips(checkpoint: str, data: str, num: int) -> tuple[nn.Module, Tensor, Tensor | None]:
    """The trained model of ``checkpoint``, the first ``num`` validation clips of the shards
    ``data`` as it sees them (normalised) and, for an external-regions model, their boxes."""
    from train.data import external_regions, make_loader, normalise
    from train.loop import load_trained

    model, cfg, _ = load_trained(checkpoint, data)
    cfg.data.num_workers = 0
    clips, boxes = [], []
    for batch in make_loader(cfg, "val", epoch=0):
        clips.append(normalise(batch["video"], cfg))
        if model.needs_regions():
            boxes.append(external_regions(batch))
        if sum(len(c) for c in clips) >= num:
            break
    if not clips:
        raise ValueError(f"{data}: no validation clips")
    return (model, torch.cat(clips)[:num], torch.cat(boxes)[:num] if boxes else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a trained run's .pt")
    ap.add_argument("--preset", default="syncmnist_r18_dyreg",
                    help="without --checkpoint: a fresh model of this preset")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--data", default=None,
                    help="with --checkpoint: take the clips from these shards (a folder or "
                         "pattern; their validation split)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.data:
        if not args.checkpoint:
            raise SystemExit("--data needs --checkpoint")
        from train.data import split_pattern

        data = split_pattern(args.data, "val") if Path(args.data).is_dir() else args.data
        model, clips, regions = shard_clips(args.checkpoint, data, args.videos)
        print(json.dumps(node_scales(model, clips, clips.shape[1], regions), indent=1))
        return
    if args.checkpoint:
        from train.predict import load_predictor

        pred = load_predictor(args.checkpoint)
        model, mean, std = pred.model, pred.mean[0], pred.std[0]
    else:
        model, mean, std = build_preset(args.preset, num_frames=10), 0.5, 0.5
    scales = node_scales(model, syncmnist_clips(args.videos, mean=mean, std=std), frames=10)
    print(json.dumps(scales, indent=1))


if __name__ == "__main__":
    main()

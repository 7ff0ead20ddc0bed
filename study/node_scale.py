"""How loud is the motion in a DyReg node? Appearance part against position part.

A DyReg node is the region's pooled features (``proj_in(pool(x, K_i))``, Eq. 7) plus the
kernel's position embedding (``Linear(K_i)``, section 3.2). The graph probe
(``gnn_sync_probe.py``, docs/RESULTS.md "Reduced tasks") finds synchrony only where the
motion signal is not drowned by the appearance inputs; this measures, for each DyReg block of
a model, the mean norm of both parts over MultiSyncMNIST validation clips and of their change
from one frame to the next (for the position part: how far the regions move, seen by the
graph):

    python study/node_scale.py --checkpoint runs/demo/best.pt --videos 16

Without ``--checkpoint`` the model is a freshly initialised ``--preset``.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch
from torch import Tensor, nn

from dyreg_pyg import DyRegGNN
from dyreg_pyg.data.syncmnist import SyncMNISTConfig, generate_video, load_digit_pool
from dyreg_pyg.models import build_preset

log = logging.getLogger("node_scale")


def node_scales(model: nn.Module, clips: Tensor, frames: int) -> dict[str, dict[str, float]]:
    """For each :class:`~dyreg_pyg.DyRegGNN` of ``model`` (by module name), the mean L2 norm
    of its nodes' appearance part and position-embedding part on ``clips`` (the model's
    input), and the mean norm of each part's change between consecutive frames."""
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
            model.eval()(clips)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a trained run's .pt")
    ap.add_argument("--preset", default="syncmnist_r18_dyreg",
                    help="without --checkpoint: a fresh model of this preset")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
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

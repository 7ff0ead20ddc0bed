"""The paper's Figure 2 from a study folder: regions of trained models on the same clips.

    python study/figure_regions.py --study /data/study --variants static,dyreg \\
        --num 3 --out study/figures/figure2_regions.png

For each variant the checkpoint ``<study>/<variant>/seed<k>/last.pt`` (written by
``study/reproduce_syncmnist.py``) runs on the first ``--num`` validation clips of the
study; every clip gives one block of rows (one row per variant: the frames with each node's
region in its colour and the ground-truth digit boxes in white), so the variants are compared
on identical inputs. Frames are evenly spaced (``--frames`` of them).

It also prints (and with ``--stats`` writes as JSON) what the trained regions look like on
those clips - the quantities to check when a region mode does not help: the residual scale
``|gamma|`` (how much the graph writes back into the backbone), the mean region radius, the
spread of the N centres within a frame, how far the centres move from frame to frame, and how
far they moved from their reference points.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dyreg_pyg.viz import draw_regions
from train.data import make_loader
from train.loop import load_trained
from train.visualize import collect_regions

log = logging.getLogger("figure")

LABEL_WIDTH = 110


def _rows(checkpoint: Path, data: str, num: int) -> tuple[list[dict], dict[str, float]]:
    """Regions of the first ``num`` clips, and statistics of the regions and of ``gamma``."""
    model, cfg, _ = load_trained(checkpoint, data)
    cfg.data.num_workers = 0
    samples = collect_regions(model, make_loader(cfg, "val"), cfg, num)[1]
    block = next(iter(model.dyreg_blocks().values()))
    reg = torch.stack([s["regions"] for s in samples])  # [S, T, N, 4]
    centres = reg[..., :2]
    n = reg.shape[2]
    pair = torch.cdist(centres.flatten(0, 1), centres.flatten(0, 1))  # [S*T, N, N]
    gen = block.gnn.region_generator
    ref = gen.alpha.ref_logit.sigmoid() if hasattr(gen, "alpha") else None
    stats = {
        "abs_gamma_mean": float(block.gamma.detach().abs().mean()),
        "radius_mean": float(reg[..., 2:].mean()),
        "centre_spread": float(pair.sum((-1, -2)).mean() / (n * (n - 1))),
        "centre_motion_per_frame": float((centres[:, 1:] - centres[:, :-1]).norm(dim=-1).mean())
        if reg.shape[1] > 1 else 0.0,
        "offset_from_reference": float((centres - ref).norm(dim=-1).mean())
        if ref is not None else None,
    }
    return samples, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True, help="folder of reproduce_syncmnist.py")
    ap.add_argument("--variants", default="static,dyreg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num", type=int, default=3, help="validation clips")
    ap.add_argument("--frames", type=int, default=5, help="frames shown per clip")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stats", default=None, help="also write the region statistics here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    study = Path(args.study)
    shards = sorted((study / "data").glob("val-*.tar"))
    if not shards:
        raise SystemExit(f"--study: no val-*.tar shards under {study / 'data'}")
    data = str(shards[0])
    per_variant, stats = {}, {}
    for v in args.variants.split(","):
        if v == "nograph":
            raise SystemExit("--variants: nograph has no regions to draw")
        ck = study / v / f"seed{args.seed}" / "last.pt"
        if not ck.exists():
            raise SystemExit(f"--variants: no checkpoint {ck}")
        per_variant[v], stats[v] = _rows(ck, data, args.num)
        log.info("%s: %s", v, {k: None if x is None else round(x, 4)
                               for k, x in stats[v].items()})
        if len(per_variant[v]) < args.num:
            raise SystemExit(f"--num: the first validation shard has only "
                             f"{len(per_variant[v])} clips")
    tiles = []
    for i in range(args.num):
        for v, samples in per_variant.items():
            s = samples[i]
            boxes = s["meta"].get("boxes") if isinstance(s["meta"], dict) else None
            size = (s["frames"].shape[-1], s["frames"].shape[-2])
            img = draw_regions(s["frames"], s["regions"], None, boxes, size, scale=3,
                               max_frames=args.frames)
            label = Image.new("RGB", (LABEL_WIDTH, img.height), (255, 255, 255))
            ImageDraw.Draw(label).text((6, img.height // 2 - 12), f"{v}\nclip {i}",
                                       fill=(0, 0, 0))
            row = Image.new("RGB", (LABEL_WIDTH + img.width, img.height), (255, 255, 255))
            row.paste(label, (0, 0))
            row.paste(img, (LABEL_WIDTH, 0))
            tiles.append(row)
    gap = 4
    canvas = Image.new("RGB", (max(t.width for t in tiles),
                               sum(t.height for t in tiles) + gap * len(tiles)), (255, 255, 255))
    y = 0
    for t in tiles:
        canvas.paste(t, (0, y))
        y += t.height + gap
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=1))
    log.info("wrote %s (%d clips x %s)", out, args.num, list(per_variant))


if __name__ == "__main__":
    main()

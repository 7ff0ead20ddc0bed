"""How much of MultiSyncMNIST can be solved without seeing any motion, and do trained models
do more than that?

The label is (smallest, largest) digit class of the subset that moves in sync. A model that
recognises every digit but detects no synchrony can still guess the most likely label of the
digits it sees. ``appearance_only_accuracy`` computes that guess's accuracy exactly from the
generator's sampling (:func:`dyreg_pyg.metrics.syncmnist_bounds.appearance_only_table`): the
ceiling of a model that uses appearance only. A paper number above it needs motion; a model at
or below it may have learnt none.

    python study/appearance_ceiling.py                       # the ceilings only
    python study/appearance_ceiling.py --rules --out study/results/probes/rule_ceilings.json
    python study/appearance_ceiling.py --study /data/study --variants nograph,oracle \\
        --seeds 0 --out study/results/b48k/appearance.json

With ``--rules`` it also prints the ceiling of every candidate data rule (``RULES``: how many
digits move in sync, how the classes and "no sync" are drawn - what the paper does not say;
issue 38) and its distance to the paper's no-graph ResNet-18, 52.29 %: a model blind to the
frames' order has no natural reason to stop elsewhere than near its rule's ceiling.

With ``--study`` (a folder of ``study/reproduce_syncmnist.py``) every
``<variant>/seed<k>/last.pt`` is run on the study's validation shards and compared, video by
video, with the appearance-only guess (from the true digit classes in each video's metadata):

- ``top1``: the model's accuracy; ``guess_top1``: the guess's accuracy on the same videos;
- ``agreement``: share of videos where the model predicts exactly the guess;
- ``top1_guess_right`` / ``top1_guess_wrong``: the model's accuracy on the videos the guess
  gets right / wrong;
- ``loss`` / ``guess_loss``: the model's cross-entropy and that of the exact appearance-only
  posterior ``P(label | digit classes)`` on the same videos. No model blind to the motion
  can have a lower expected loss than the posterior (1.74 nats on MultiSyncMNIST), so a
  ``loss`` below ``guess_loss`` is evidence of synchrony detection; above it, there is none.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from dyreg_pyg.data import load_manifest
from dyreg_pyg.data.syncmnist import DATA_RULES, SyncMNISTConfig
from dyreg_pyg.metrics.syncmnist_bounds import (
    appearance_only_accuracy,
    appearance_only_loss,
    appearance_only_table,
)
from train.data import external_regions, make_loader, normalise, split_pattern
from train.loop import load_trained

log = logging.getLogger("appearance_ceiling")

PAPER_NOGRAPH = 52.29
"""The paper's no-graph ResNet-18 on MultiSyncMNIST (Table 6), top-1 %."""

_SIZES = (2, 3, 4, 5)
RULES: dict[str, dict[str, Any]] = {
    "exactly 2, label first": dict(sync_sizes=(2,)),
    "exactly 2, iid": dict(sync_sizes=(2,), class_rule="iid"),
    "2 or 3, label first (2or3)": DATA_RULES["2or3"],
    "2 or 3, iid": dict(sync_sizes=(2, 3), class_rule="iid"),
    "2-5 uniform, label first": dict(sync_sizes=_SIZES),
    "2-5 uniform, label first, no sync 1/92": dict(sync_sizes=_SIZES, p_no_sync=1 / 92),
    "2-5 uniform, label first, no sync 1/102 (2to5)": DATA_RULES["2to5"],
    "2-5 uniform, iid": dict(sync_sizes=_SIZES, class_rule="iid"),
    "2-5 uniform, iid, no sync 1/102 (2to5iid)": DATA_RULES["2to5iid"],
    "binomial 1/2 given 2-5, label first": dict(sync_sizes=_SIZES, sync_size_rule="binomial"),
    "binomial 1/2 given 2-5, iid": dict(sync_sizes=_SIZES, sync_size_rule="binomial",
                                        class_rule="iid"),
    "binomial 1/2, under 2 = no sync, label first": dict(sync_sizes=_SIZES,
                                                          sync_size_rule="binomial_nosync"),
    "binomial 1/2, under 2 = no sync, iid": dict(sync_sizes=_SIZES, class_rule="iid",
                                                 sync_size_rule="binomial_nosync"),
}
"""Candidate MultiSyncMNIST data rules (5 digits; "no sync" 1/56 unless named): the sizes of
the in-sync subset (uniform over the listed sizes, or every digit in with probability 1/2),
how the classes are drawn (``label_first``: the pair first, uniform; ``iid``: every class
uniform, the label follows) and P("no sync")."""


def rule_ceilings() -> list[dict[str, Any]]:
    """Every :data:`RULES` candidate's exact appearance-only ceiling (%), cross-entropy floor
    (nats), P("no sync") and distance to the paper's no-graph 52.29 %."""
    rows = []
    for name, fields in RULES.items():
        cfg = SyncMNISTConfig(**fields)
        top1 = 100 * appearance_only_accuracy(cfg)
        rows.append({"rule": name, "fields": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in fields.items()},
                     "p_no_sync": cfg.no_sync_probability, "ceiling": top1,
                     "floor": appearance_only_loss(cfg), "minus_paper": top1 - PAPER_NOGRAPH})
    return rows


def compare_with_guess(checkpoint: Path, data: str) -> dict[str, Any]:
    """Run ``checkpoint`` on the shards ``data`` and compare it with the appearance-only guess."""
    model, cfg, _ = load_trained(checkpoint, data)
    model.eval()
    # the generator's own config (label kind, p_no_sync, sync sizes) from the shards' manifest;
    # shards written before manifests recorded it: the defaults of each video's variant
    manifest = load_manifest(data)  # a corrupt one is a ValueError naming it
    recorded = SyncMNISTConfig.from_manifest(manifest) \
        if manifest and "config" in manifest else None
    tables: dict[str, dict[tuple[int, ...], Any]] = {}
    rows = []  # (model right, guess right, model == guess, model NLL, posterior NLL)
    with torch.no_grad():
        for batch in make_loader(cfg, "val", epoch=0):
            video = normalise(batch["video"], cfg)
            regions = external_regions(batch) if model.needs_regions() else None
            logp = model(video, regions).float().log_softmax(-1)
            for lp, y, meta in zip(logp, batch["label"].tolist(), batch["meta"]):
                variant = meta.get("variant", "multi")
                if variant not in tables:
                    tables[variant] = appearance_only_table(recorded or SyncMNISTConfig(
                        variant=variant, digits=len(meta["digit_classes"])))
                joint = tables[variant][tuple(sorted(meta["digit_classes"]))]
                p, g = int(lp.argmax()), int(joint.argmax())
                rows.append((p == y, g == y, p == g, -float(lp[y]),
                             -math.log(joint[y] / joint.sum())))
    if not rows:
        raise ValueError(f"{data}: no validation videos")
    t = torch.tensor(rows, dtype=torch.float64)
    right = t[:, 1].bool()
    return {
        "samples": len(rows),
        "top1": float(t[:, 0].mean()),
        "guess_top1": float(t[:, 1].mean()),
        "agreement": float(t[:, 2].mean()),
        "top1_guess_right": float(t[right, 0].mean()) if right.any() else None,
        "top1_guess_wrong": float(t[~right, 0].mean()) if (~right).any() else None,
        "loss": float(t[:, 3].mean()),
        "guess_loss": float(t[:, 4].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=None, help="folder of reproduce_syncmnist.py")
    ap.add_argument("--variants", default="nograph,fixed,dyreg")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=None, help="also write the results here (JSON)")
    ap.add_argument("--rules", action="store_true",
                    help="also the ceilings of the candidate data rules (issue 38)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results: dict[str, Any] = {
        "ceiling": {v: appearance_only_accuracy(SyncMNISTConfig(variant=v))
                    for v in ("multi", "single")}}
    print(f"appearance-only ceiling: MultiSyncMNIST {100 * results['ceiling']['multi']:.2f} %, "
          f"SyncMNIST {100 * results['ceiling']['single']:.2f} %")
    if args.rules:
        rows = results["rules"] = rule_ceilings()
        print(f"| data rule | P(no sync) | appearance-only top-1 % | cross-entropy floor | "
              f"minus the paper's no graph ({PAPER_NOGRAPH} %) |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['rule']} | {r['p_no_sync']:.4f} | {r['ceiling']:.2f} | "
                  f"{r['floor']:.3f} | {r['minus_paper']:+.2f} |")
    if args.study:
        study = Path(args.study)
        try:
            data = split_pattern(study / "data", "val")
        except ValueError as e:
            raise SystemExit(f"--study: {e}") from None
        manifest = load_manifest(data)
        if manifest and "config" in manifest:  # the study's own data (task, p_no_sync, ...)
            own = results["ceiling"]["study"] = appearance_only_accuracy(
                SyncMNISTConfig.from_manifest(manifest))
            print(f"appearance-only ceiling of the study's data: {100 * own:.2f} %")
        print("| run | top-1 % | guess top-1 % | agreement % | top-1 where the guess is right "
              "/ wrong % | loss / guess loss |\n|---|---|---|---|---|---|")
        for v in args.variants.split(","):
            for s in args.seeds.split(","):
                ck = study / v / f"seed{s}" / "last.pt"
                if not ck.exists():
                    log.warning("%s: no checkpoint, skipped", ck)
                    continue
                r = results[f"{v}/seed{s}"] = compare_with_guess(ck, data)
                print(f"| {v}/seed{s} | {100 * r['top1']:.2f} | {100 * r['guess_top1']:.2f} | "
                      f"{100 * r['agreement']:.2f} | {100 * (r['top1_guess_right'] or 0):.2f} / "
                      f"{100 * (r['top1_guess_wrong'] or 0):.2f} | {r['loss']:.3f} / "
                      f"{r['guess_loss']:.3f} |", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

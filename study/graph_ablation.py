"""How much does a trained model use its graph? Validate it with the graph on and switched off.

    python study/graph_ablation.py --study /data/study --variants fixed,dyreg --seeds 0,1 \\
        --out study/results/b48k/graph_ablation.json

For each ``<study>/<variant>/seed<k>/last.pt`` (written by
``study/reproduce_syncmnist.py``) on the study's validation shards:

- ``top1_graph_on``: the model as trained;
- ``top1_graph_off``: the same weights with every DyReg block's residual scale ``gamma`` set
  to zero, so the block returns its input unchanged (``x + 0 * norm(DyRegGNN(x))``) - the
  backbone alone, with the normalisation statistics it was trained with;
- ``write_back_ratio``: ``||gamma * norm(DyRegGNN(x))|| / ||x||`` over the validation set, how
  large the graph's write-back is next to the feature map it is added to.

A large drop from on to off means the network relies on its graph; a ratio of a few percent
with no drop means the graph was left out of the computation, whatever its parameter count.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from train.data import make_loader, split_pattern
from train.dist import setup_distributed
from train.loop import load_trained, validate

log = logging.getLogger("graph_ablation")


class _RatioMeter:
    """Accumulates ``||gamma * y||^2`` and ``||x||^2`` of a DyReg block over forward calls."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.write, self.base = 0.0, 0.0
        self._x: torch.Tensor | None = None
        self._hooks = [block.register_forward_pre_hook(self._pre),
                       block.register_forward_hook(self._post)]

    def _pre(self, module: torch.nn.Module, args: tuple) -> None:
        self._x = args[0].detach().float()

    def _post(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        x = self._x
        self.write += float((out.detach().float() - x).pow(2).sum())
        self.base += float(x.pow(2).sum())

    @property
    def ratio(self) -> float | None:
        return (self.write / self.base) ** 0.5 if self.base else None

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def ablate(checkpoint: Path, data: str) -> dict[str, float | None]:
    """Validation top-1 of ``checkpoint`` with its graph on and off, and the write-back ratio."""
    env = setup_distributed("cpu")
    model, cfg, num_classes = load_trained(checkpoint, data)
    blocks = model.dyreg_blocks()
    if not blocks:
        raise ValueError(f"{checkpoint}: the model has no DyReg block to switch off")
    meters = [_RatioMeter(b) for b in blocks.values()]
    on = validate(model, make_loader(cfg, "val", epoch=0), cfg, env, num_classes,
                  record_regions=False)
    ratios = [m.ratio for m in meters if m.ratio is not None]
    for m in meters:
        m.remove()
    with torch.no_grad():
        for b in blocks.values():
            b.gamma.zero_()
    off = validate(model, make_loader(cfg, "val", epoch=0), cfg, env, num_classes,
                   record_regions=False)
    return {
        "samples": on["samples"],
        "top1_graph_on": on["top1"],
        "top1_graph_off": off["top1"],
        "drop": on["top1"] - off["top1"],
        "write_back_ratio": max(ratios) if ratios else None,  # the largest block's
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True, help="folder of reproduce_syncmnist.py")
    ap.add_argument("--variants", default="fixed,dyreg")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    study = Path(args.study)
    try:
        data = split_pattern(study / "data", "val")
    except ValueError as e:
        raise SystemExit(f"--study: {e}") from None
    results: dict[str, dict[str, float | None]] = {}
    for v in args.variants.split(","):
        for s in args.seeds.split(","):
            ck = study / v / f"seed{s}" / "last.pt"
            if not ck.exists():
                log.warning("%s: no checkpoint, skipped", ck)
                continue
            results[f"{v}/seed{s}"] = r = ablate(ck, data)
            log.info("%s seed %s: top-1 %.2f %% with the graph, %.2f %% without (drop %.2f); "
                     "write-back %.3f of the map", v, s, 100 * r["top1_graph_on"],
                     100 * r["top1_graph_off"], 100 * r["drop"], r["write_back_ratio"] or 0.0)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

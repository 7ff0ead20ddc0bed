"""Frozen checkpoints and reference outputs of :class:`~dyreg_pyg.DyRegBlock` (issue 34).

Each case is a tiny block with every parameter made random (seeded) and rounded to float16
(stored in float16, loaded exactly into a float64 block), saved as a training checkpoint holds
it (``{"model": state_dict, ...}``) together with a float64 input and the block's and the
module's float64 outputs at the time of writing. The authors' flavour is the largest (about
100 KB): their region encoder has fixed widths (32, 16). The test
``tests/test_frozen_outputs.py`` loads every file into today's code (through the
documented key remap of older
checkpoints) and checks the outputs are unchanged.

The files were written once, before the module was restructured (issue 34); rewriting them
with a later version would freeze that version instead. To write them again (only on purpose)::

    PYTHONPATH=. python tests/dyreg_fixtures.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FIXTURES = Path(__file__).parent / "fixtures"

CASES: dict[str, dict[str, Any]] = {
    "paper_dyreg": dict(num_nodes=4, region_channels=4, spatial_size=(6, 6), regions="dyreg"),
    "paper_fixed_proj": dict(num_nodes=4, region_channels=4, spatial_size=(6, 6),
                             regions="fixed", node_channels=4, norm="layer", gnn="GATConv"),
    "paper_dense_pos": dict(num_nodes=4, region_channels=4, spatial_size=(6, 6),
                            regions="pos_only", backend="dense", position_input="region"),
    "authors": dict(flavor="authors", num_nodes=4, region_channels=4, spatial_size=(6, 6)),
    "authors_proj": dict(flavor="authors", num_nodes=4, region_channels=4,
                         spatial_size=(6, 6), node_channels=4, init="grid"),
}
"""Name -> :class:`~dyreg_pyg.DyRegConfig` fields (in_channels 8, input [1, 3, 8, 6, 6])."""

IN_CHANNELS = 8


def randomise(module: nn.Module, seed: int) -> None:
    """Add seeded noise to every parameter (gates, gains, norm scales included) so that
    every branch contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            p.copy_(p.half())  # representable in float16: stored at half the size, exactly


def run_case(block: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The outputs frozen per case: the block's, the module's, its regions and attention."""
    with torch.no_grad():
        out_block = block(x)
        out_gnn, details = block.gnn(x, return_details=True)
    res = {"block": out_block, "gnn": out_gnn, "regions": details.regions}
    if details.attention is not None:
        res["attention"] = details.attention
    return res


def make_case(name: str, seed: int) -> dict[str, Any]:
    """Build, randomise and run one case; the dict saved to ``fixtures/<name>.pt``."""
    from dyreg_pyg import DyRegBlock, DyRegConfig

    torch.manual_seed(seed)
    cfg = DyRegConfig(**CASES[name])
    block = DyRegBlock(IN_CHANNELS, cfg)
    randomise(block, seed)
    block = block.double().eval()
    x = torch.randn(1, 3, IN_CHANNELS, 6, 6, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    state = {k: v.half() if v.is_floating_point() else v for k, v in block.state_dict().items()}
    return {"model": state, "config": cfg.to_dict(), "in_channels": IN_CHANNELS,
            "x": x, "outputs": run_case(block, x)}


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    for seed, name in enumerate(CASES):
        torch.save(make_case(name, seed), FIXTURES / f"{name}.pt")


if __name__ == "__main__":
    main()

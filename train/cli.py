"""Command line of ``python -m train``."""

from __future__ import annotations

import argparse
import logging

import torch

from dyreg_pyg import DyRegBlock


def _demo(args: argparse.Namespace) -> int:
    """A real forward/backward of a DyReg block on random features; prints region boxes."""
    torch.manual_seed(args.seed)
    block = DyRegBlock(64, node_channels=32, init="grid")
    block.record = True
    x = torch.randn(2, 4, 64, 14, 14)
    opt = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9)
    for step in range(args.steps):
        loss = (block(x) - x.roll(1, dims=-1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.5f}")
    boxes = block.last.boxes[0, 0]
    for i, b in enumerate(boxes.tolist()):
        print(f"node {i}: box (x0, y0, x1, y1) = ({b[0]:.3f}, {b[1]:.3f}, {b[2]:.3f}, {b[3]:.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the embedded default main job")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return {"demo": _demo}[args.command](args)

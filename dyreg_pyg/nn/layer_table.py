"""Which ``torch_geometric.nn.conv`` layers train inside :class:`~dyreg_pyg.DyRegGNN`.

Every class of ``torch_geometric.nn.conv`` (:func:`~dyreg_pyg.nn.registry.pyg_conv_classes`)
is built as ``DyRegGNN(4, node_channels=8, num_nodes=4, init="grid", iterations=1,
gnn=name)`` and either
trains - a forward and a backward on a tiny clip give finite gradients everywhere, some of
them on the region generator, and, for a layer that takes the geometry (``pos``,
``edge_attr``, ``edge_weight``), a gradient of the space step on the regions themselves - or
is refused at construction with a one-line ``ValueError`` naming what is missing.

``python -m dyreg_pyg.nn.layer_table`` prints the table;
``--write docs/RESULTS.md`` puts it between the markers :data:`BEGIN` and :data:`END`;
``tests/test_layer_table.py`` checks that the table there is the one computed today.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .inputs import GraphInputs, plan_of
from .registry import pyg_conv_classes

__all__ = ["LayerStatus", "layer_status", "layer_table", "markdown", "BEGIN", "END"]

BEGIN = "<!-- layer-table:begin (python -m dyreg_pyg.nn.layer_table --write) -->"
END = "<!-- layer-table:end -->"


@dataclass(frozen=True)
class LayerStatus:
    """One row: ``name``, whether it ``trains``, and the inputs its forward is given (when it
    trains) or the refusal (the ``ValueError``'s message)."""

    name: str
    trains: bool
    detail: str


def _clip() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 2, 4, 4, 4, generator=g)


def layer_status(name: str, x: torch.Tensor | None = None) -> LayerStatus:
    """Build, run and back-propagate ``gnn=name`` (see the module docstring).

    Raises:
        AssertionError: the layer builds but does not train (non-finite gradients, or no
            gradient reaching the regions) - a bug, not a refusal.
    """
    from ..module import DyRegGNN

    x = _clip() if x is None else x
    torch.manual_seed(0)
    try:
        m = DyRegGNN(x.shape[2], node_channels=8, num_nodes=4, init="grid", iterations=1,
                     gnn=name)
    except ValueError as err:
        return LayerStatus(name, False, str(err))
    m(x).square().sum().backward()
    grads = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
    bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{name}: non-finite gradients in {bad}"
    assert any(k.startswith("region_generator.") and g.abs().sum() > 0
               for k, g in grads.items()), f"{name}: no gradient on the region generator"
    plan = plan_of(m.spatial[0])
    if plan.geometry:  # the geometry alone carries a gradient to the regions
        regions = torch.rand(1, 2, 4, 4).mul(0.4).add(0.1).requires_grad_()
        nodes = torch.randn(1, 2, 4, 8)
        out, _ = m.graph_stack(nodes, False, GraphInputs(regions))
        out.square().sum().backward()
        assert regions.grad is not None and torch.isfinite(regions.grad).all() \
            and regions.grad.abs().sum() > 0, f"{name}: no gradient from the geometry"
    return LayerStatus(name, True, ", ".join(plan.names))


def layer_table() -> list[LayerStatus]:
    """:func:`layer_status` of every class of ``torch_geometric.nn.conv``, on one thread (the
    tiny ops are slower on several)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = _clip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [layer_status(name, x) for name in pyg_conv_classes()]
    finally:
        torch.set_num_threads(threads)


def _reason(message: str) -> str:
    """The refusal without the leading ``gnn: `` and the trailing advice."""
    for tail in ("; pass a callable", " - pass a callable"):
        message = message.split(tail)[0]
    return message.removeprefix("gnn: ").replace("|", "\\|")


def markdown(rows: list[LayerStatus]) -> str:
    """The table as Markdown, between :data:`BEGIN` and :data:`END`."""
    trained = sum(r.trains for r in rows)
    lines = [BEGIN, "",
             f"{trained} of {len(rows)} classes of `torch_geometric.nn.conv` train in "
             f"`DyRegGNN(gnn=...)`; {len(rows) - trained} are refused at construction.", "",
             "| layer | status | inputs given / reason refused |", "|---|---|---|"]
    for r in rows:
        status = "trains" if r.trains else "refused"
        detail = f"`{r.detail}`" if r.trains else _reason(r.detail)
        lines.append(f"| `{r.name}` | {status} | {detail} |")
    return "\n".join([*lines, "", END])


def _replace_between_markers(text: str, table: str, path: Path) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: no layer-table markers ({BEGIN!r} ... {END!r})")
    head, rest = text.split(BEGIN, 1)
    return head + table + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="Markdown file to update between markers")
    args = parser.parse_args(argv)
    table = markdown(layer_table())
    if args.write is None:
        sys.stdout.write(table + "\n")
        return 0
    text = args.write.read_text(encoding="utf-8")
    args.write.write_text(_replace_between_markers(text, table, args.write), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

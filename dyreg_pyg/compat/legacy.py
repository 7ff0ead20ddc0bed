"""State dicts written by earlier versions of this library: the documented key remap.

Before issue 34 the authors' flavour was a hidden child of :class:`~dyreg_pyg.DyRegGNN`
(``DyRegGNN.authors``), so its parameters were saved under ``<block>.gnn.authors.<part>``
(``authors.<part>`` for a bare module). Today :class:`~dyreg_pyg.authors.AuthorsDyRegGNN` is
the module itself and the same parameters are ``<block>.gnn.<part>``; the names of the parts
(``regions.*``, ``spatial.0.*``, ``temporal_out.*``, ...) and every paper-flavour name are
unchanged.

================================  ==========================
written before                    loads today as
================================  ==========================
``<prefix>gnn.authors.<rest>``    ``<prefix>gnn.<rest>``
``authors.<rest>`` (bare module)  ``<rest>``
================================  ==========================

:func:`remap_legacy_keys` applies the table; the training checkpoint loader
(``train/checkpoint.load_model_state``) applies it to every checkpoint it reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["LEGACY_KEY_RULES", "remap_legacy_keys", "legacy_config"]

V = TypeVar("V")

LEGACY_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(^|\.)gnn\.authors\."), r"\1gnn."),
    (re.compile(r"^authors\."), ""),
)
"""``(pattern, replacement)`` pairs applied, in order, to every key (``re.sub``, once)."""


def remap_legacy_keys(state: Mapping[str, V]) -> dict[str, V]:
    """``state`` with the keys of earlier versions renamed to today's (the table in the
    module docstring); other keys, and their order, unchanged.

    Raises:
        ValueError: two keys that would land on the same name (an old and a new name of the
            same parameter in one state dict).
    """
    out: dict[str, V] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in LEGACY_KEY_RULES:
            new = pattern.sub(repl, new, count=1)
        if new in out:
            raise ValueError(f"state dict: {key!r} and another key both map to {new!r} "
                             f"(an old and a new name of the same parameter?)")
        out[new] = value
    return out


def legacy_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A :class:`~dyreg_pyg.DyRegConfig` mapping saved by an earlier version, as today's
    fields: one without ``edge_geometry`` predates issue 35, when PyG layers got
    ``(x, edge_index)`` only and no ``edge_dim`` - it loads with ``edge_geometry=False``, the
    same layers (and state-dict keys) it was saved with."""
    out = dict(values)
    out.setdefault("edge_geometry", False)
    return out

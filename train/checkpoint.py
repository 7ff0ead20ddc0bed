"""Atomic checkpoints with full training state, loaded with ``weights_only=True``."""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import torch

from dyreg_pyg._checks import load_error, nonfinite_entry, not_a_file
from dyreg_pyg._io import write_atomic
from dyreg_pyg.compat.legacy import remap_legacy_keys

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng",
           "load_model_state", "CheckpointError"]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


CHECKPOINT_FORMAT = 2
"""Written into every checkpoint (``"format"``). 2: since issue 35, PyG layers that take
``edge_dim`` get the region graph's ``edge_attr`` (``DyRegConfig.edge_geometry``); a
checkpoint without the field was trained without it (:func:`checkpoint_config`)."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus ``"format"``) atomically: temporary file in the same folder,
    fsync, rename.

    A crash at any point leaves either the previous file or the new one, never a partial file.
    """
    state = {**state, "format": CHECKPOINT_FORMAT}
    return write_atomic(path, lambda fh: torch.save(state, fh), sync_dir=True)


def checkpoint_config(ck: dict[str, Any]) -> dict[str, Any]:
    """The training config saved in ``ck``, as today's code reads it: a checkpoint written
    before format 2 built its DyReg blocks without edge geometry, so they are rebuilt so
    (``model.overrides.dyreg.edge_geometry: false`` unless the config set it) and its PyG
    layers keep the state-dict keys they were saved with."""
    values = copy.deepcopy(ck["config"])
    if ck.get("format", 1) < 2:
        model = values.setdefault("model", {})
        overrides = model.get("overrides") or {}
        dyreg = dict(overrides.get("dyreg") or {})
        dyreg.setdefault("edge_geometry", False)
        model["overrides"] = {**overrides, "dyreg": dyreg}
    return values


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file: it is not a regular file (missing, a folder, a
            fifo), is truncated or corrupt, holds a pickle ``weights_only=True`` refuses, has
            no ``model`` entry, or a model weight is NaN or inf (the first such key named).
    """
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise CheckpointError(f"checkpoint: {path} {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle opcodes, ...
        raise CheckpointError(f"checkpoint: {load_error(path, err)}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint: {path} has no 'model' entry")
    if isinstance(state["model"], dict):
        found = nonfinite_entry(state["model"])
        if found is not None:
            key, bad, total = found
            raise CheckpointError(
                f"checkpoint: {path} has non-finite weights (NaN or inf): {key!r} has {bad} of "
                f"{total} values non-finite; refusing to load a model that would give "
                "meaningless scores")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a clear message listing missing/unexpected keys.

    Keys of earlier versions are renamed first
    (:func:`dyreg_pyg.compat.remap_legacy_keys`: ``gnn.authors.*`` -> ``gnn.*``)."""
    state_dict = remap_legacy_keys(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shape:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        raise CheckpointError(
            f"{source}: does not match the model (another architecture?). "
            f"missing keys: [{head(missing)}]; unexpected keys: [{head(unexpected)}]; "
            f"shape mismatches: [{head(shape)}]"
        )
    model.load_state_dict(state_dict)


def capture_rng() -> dict[str, Any]:
    """RNG states as tensors and plain lists (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Checkpoints of the authors' released DyReg-GNN (github bit-ml/DyReg-GNN) for the
``flavor="authors"`` models (preset ``tsm_r50_dyreg_authors``).

Their TSM-ResNet50 (``ops/models.py``: ``TSN``) stores the backbone under ``base_model.``,
the temporal shift as ``conv1.net`` and each DyReg module inside a bottleneck as
``conv2 = Sequential(SplitBT(conv2), DynamicGraphWrapper)`` (``conv2.0.block``,
``conv2.1.dynamic_graph``, ``conv2.1.norm_dict.residual_norm``), the classifier as ``new_fc``,
all under ``module.`` when saved from DistributedDataParallel. :func:`official_key` maps one of
their names to ours; :func:`convert_official` maps a whole state dict and checks it;
:func:`load_official` loads it into a model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_finite, load_error, not_a_file

__all__ = ["official_key", "convert_official", "load_official", "read_official_checkpoint",
           "same_layout", "OFFICIAL_CONSTANTS"]

log = logging.getLogger(__name__)

# Their DynamicGraph (+ RSTG) sub-module prefixes -> ours under DyRegBlock.gnn (an
# AuthorsDyRegGNN; before issue 34 under DyRegBlock.gnn.authors, see compat/legacy.py).
_GRAPH_PREFIXES: tuple[tuple[str, str], ...] = (
    ("project_i3d_linear.", "proj_in."),
    ("norm_dict.dynamic_graph_projection.", "proj_in_norm."),
    ("project_back_i3d_linear.", "proj_out."),
    ("fishnet.conv1.", "regions.encoder.reduce."),
    ("fishnet.norm_dict.norm1.", "regions.encoder.reduce_norm."),
    ("fishnet.tail_conv.", "regions.encoder.down."),
    ("fishnet.norm_dict.tail_norm_", "regions.encoder.down_norm."),
    ("fishnet.body_trans_conv.0.", "regions.encoder.up."),
    ("fishnet.norm_dict.body_trans_norm_0.", "regions.encoder.up_norm."),
    ("fishnet.head_conv.0.", "regions.encoder.head."),
    ("fishnet.norm_dict.head_norm_0.", "regions.encoder.head_norm."),
    ("global_conv.0.", "regions.node_fc."),
    ("norm_dict.offset_ln_feats_coords.", "regions.feature_norm."),
    ("offset_lstm.", "regions.gru."),
    ("norm_dict.offset_ln_lstm.", "regions.gru_norm."),
    ("offset_pred.", "regions.out."),
    ("offset_alpha", "regions.gain"),
    ("kernel_projection1.", "pos_embed.lin."),
    ("rstg.norm_dict.before_graph_norm.", "input_norm."),
    ("rstg.internal_lstm.", "temporal.0.rnn."),
    ("rstg.external_lstm.", "temporal_out.rnn."),
    ("rstg.send_mlp.0.", "spatial.0.lin_message."),
    ("rstg.att_q.", "spatial.0.lin_query."),
    ("rstg.att_k.", "spatial.0.lin_key."),
    ("rstg.att_bias", "spatial.0.att_bias"),
    ("rstg.norm_dict.send_message_norm.", "spatial.0.message_norm."),
    ("rstg.norm_dict.update_norm.", "spatial.0.update_norm."),
)

OFFICIAL_CONSTANTS = ("ph_buf", "pw_buf", "arange_h_buf", "arange_w_buf")
"""Buffers of their ``DynamicGraph`` that hold constants (reference points, pixel indices):
checked against the model's, not loaded."""

_BLOCK = re.compile(r"^base_model\.(layer\d+\.\d+)\.conv2\.(0\.block|1)\.(.*)$")


def _legacy(key: str) -> str:
    """Their own renaming of older checkpoints (``main_standard.py``, ``--resume``)."""
    if ".conv2.block." in key:
        key = key.replace(".conv2.block.", ".conv2.0.block.")
    if ".conv2.dynamic_graph." in key:
        key = key.replace(".conv2.dynamic_graph.", ".conv2.1.dynamic_graph.")
    if ".conv2.norm_dict.residual_norm" in key:
        key = key.replace(".conv2.norm_dict.residual_norm", ".conv2.1.norm_dict.residual_norm")
    return key


def official_key(key: str) -> str | None:
    """Our ``VideoModel`` state-dict name of one of their keys; ``None`` if it has none.

    ``module.`` (DDP) is dropped; constants (:data:`OFFICIAL_CONSTANTS`) map to
    ``"<our block prefix>.<name>"`` so that the caller can check them.
    """
    key = _legacy(key.removeprefix("module."))
    if key.startswith("new_fc."):
        return "fc." + key.removeprefix("new_fc.")
    if not key.startswith("base_model."):
        return None
    m = _BLOCK.match(key)
    if m is None:
        rest = key.removeprefix("base_model.").replace(".conv1.net.", ".conv1.layer.")
        return "backbone." + rest
    block, part, leaf = m.groups()
    if part == "0.block":
        return f"backbone.{block}.conv2.{leaf}"
    ours = f"backbone.{block}.conv2.dyreg_after.dyreg."
    if leaf.startswith("norm_dict.residual_norm."):
        return ours + "norm.norm." + _affine(leaf.removeprefix("norm_dict.residual_norm."))
    if not leaf.startswith("dynamic_graph."):
        return None
    leaf = leaf.removeprefix("dynamic_graph.")
    if leaf in OFFICIAL_CONSTANTS:
        return ours + leaf
    for theirs, mine in _GRAPH_PREFIXES:
        if leaf.startswith(theirs):
            rest = leaf.removeprefix(theirs)
            if theirs.endswith("_"):  # tail_norm_<i>.scale -> down_norm.<i>.weight
                idx, _, rest = rest.partition(".")
                mine = f"{mine}{idx}."
            return ours + "gnn." + mine + _affine(rest)
    return None


def _affine(leaf: str) -> str:
    """Their LayerNorm parameters are ``scale``/``bias``; ours ``weight``/``bias``."""
    return "weight" if leaf == "scale" else leaf


def read_official_checkpoint(checkpoint: str | Path | Mapping[str, Any]) -> dict[str, Tensor]:
    """Their state dict from a ``.pth.tar`` path (loaded with ``weights_only=True``), a
    checkpoint dict (``{"state_dict": ...}``) or a state dict.

    Raises:
        ValueError: naming the file: it is not a regular file, is truncated or corrupt, holds
            a pickle ``weights_only=True`` refuses, is not a state dict, or a tensor holds NaN
            or inf (:class:`~dyreg_pyg._checks.NonFiniteError`, naming the first such key).
    """
    source = "checkpoint"
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        source = f"checkpoint {path}"
        problem = not_a_file(path)
        if problem:
            raise ValueError(f"checkpoint: {path} {problem}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, refused pickle opcodes, ...
            raise ValueError(f"checkpoint: {load_error(path, err)}") from err
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a state dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a mapping of names to tensors (or "
                         "{'state_dict': ...})")
    check_finite(state, source)
    return dict(state)


def _constant_expected(model: nn.Module, ours: str, name: str) -> Tensor | None:
    """The value our model implies for one of their constants (``None``: no such block)."""
    block_name, _, _ = ours.rpartition(".")
    try:
        block = model.get_submodule(block_name)
    except AttributeError:
        return None
    authors = getattr(block, "gnn", None)
    if not hasattr(authors, "ref_rows"):
        return None
    h, w = authors.size
    if name == "ph_buf":
        return authors.ref_rows.view(1, -1, 1)
    if name == "pw_buf":
        return authors.ref_cols.view(1, -1, 1)
    if name == "arange_h_buf":
        return torch.arange(h).view(1, 1, h)
    return torch.arange(w).view(1, 1, w)


def _block_key(key: str) -> str | None:
    """One key of their ``DynamicGraphWrapper`` (``dynamic_graph.*``,
    ``norm_dict.residual_norm.*``) -> ours in a :class:`~dyreg_pyg.DyRegBlock`."""
    ours = official_key(_FAKE_THEIRS + key.removeprefix("module."))
    if ours is None or not ours.startswith(_FAKE_OURS):
        return None
    return ours.removeprefix(_FAKE_OURS)


_FAKE_THEIRS = "base_model.layer0.0.conv2.1."
_FAKE_OURS = "backbone.layer0.0.conv2.dyreg_after.dyreg."


def same_layout(theirs: torch.Size | tuple[int, ...], ours: torch.Size | tuple[int, ...]
                ) -> bool:
    """Whether a tensor of shape ``theirs`` may be reshaped to ``ours``: only when the two
    differ by singleton dimensions, i.e. the sizes other than 1 are the same, in the same
    order (their ``LayerNorm2D`` scale ``[1, C, 1, 1]`` -> ``[C]``, their ``att_bias``
    ``[1, 1, 1, N]`` -> ``[N]``, a 1 x 1 conv ``[O, I, 1, 1]`` <-> a linear ``[O, I]``). Equal
    element counts are not enough: ``[2048, 174]`` is not ``[174, 2048]`` transposed in
    memory, nor ``[3, 64, 7, 7]`` a ``[64, 3, 7, 7]`` conv."""
    return [s for s in theirs if s != 1] == [s for s in ours if s != 1]


def convert_official(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Their state dict -> ours for ``model`` (every entry of both accounted for).

    ``model`` is a whole model (their ``TSN`` keys) or one ``flavor="authors"``
    :class:`~dyreg_pyg.DyRegBlock` (the keys of one of their ``DynamicGraphWrapper``).

    A tensor is reshaped only across singleton dimensions (:func:`same_layout`); any other
    shape difference is a mismatch, even with the same number of elements (a transposed
    classifier, a permuted conv).

    Raises:
        ValueError: listing their keys without a counterpart, our keys they do not provide,
            tensors whose shapes disagree (their key and shape, ours and our shape), and
            constants that differ (e.g. ``init``); a tensor with NaN or inf.
    """
    from ..module import DyRegBlock

    check_finite(state, "checkpoint")
    key_of = _block_key if isinstance(model, DyRegBlock) else official_key
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    unmapped, mismatched, constants = [], [], []
    provided: set[str] = set()  # ours that came with the wrong shape (not also "missing")
    for key, value in state.items():
        ours = key_of(key)
        if ours is None:
            unmapped.append(key)
            continue
        leaf = ours.rpartition(".")[2]
        if leaf in OFFICIAL_CONSTANTS:
            expected = _constant_expected(model, ours, leaf)
            if expected is None:
                unmapped.append(key)
            elif expected.shape != value.shape or not torch.allclose(
                    expected.double(), value.double().cpu(), rtol=0, atol=1e-5):
                constants.append(f"{key} (theirs {value.flatten()[:9].tolist()}, ours "
                                 f"{expected.flatten()[:9].tolist()})")
            continue
        if ours not in target:
            unmapped.append(f"{key} -> {ours}")
            continue
        want = target[ours]
        if value.shape != want.shape:
            if not same_layout(value.shape, want.shape):
                mismatched.append(f"{key} {tuple(value.shape)} -> {ours} {tuple(want.shape)}")
                provided.add(ours)
                continue
            value = value.reshape(want.shape)  # LayerNorm scale [1, C, 1, 1] -> [C]
        out[ours] = value.to(want.dtype)
    missing = sorted(set(target) - set(out) - provided)
    problems = []
    if mismatched:  # first: a long list of missing keys would hide them
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if unmapped:
        problems.append(f"their keys without a counterpart ({len(unmapped)}): {unmapped}")
    if missing:
        problems.append(f"our keys not in the checkpoint ({len(missing)}): {missing}")
    if constants:
        problems.append(f"constants that differ (regions init / map size?): {constants}")
    if problems:
        raise ValueError("checkpoint: the authors' state dict does not fit the model: "
                         + "; ".join(problems))
    return out


def load_official(model: nn.Module, checkpoint: str | Path | Mapping[str, Any]) -> nn.Module:
    """Load the authors' checkpoint into ``model`` (e.g. ``build_preset(
    "tsm_r50_dyreg_authors")``) and return it.

    Args:
        model: a model whose DyReg blocks use ``flavor="authors"`` at their places.
        checkpoint: their ``.pth.tar`` (read with ``torch.load(..., weights_only=True)``), its
            loaded dict, or a state dict.

    Raises:
        ValueError: see :func:`read_official_checkpoint` (the file) and
            :func:`convert_official` (the fit to ``model``).
    """
    state = convert_official(model, read_official_checkpoint(checkpoint))
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors of the authors' checkpoint", len(state))
    return model

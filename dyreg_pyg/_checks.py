"""Checks shared by the library's and the training code's loaders: what a path that is not a
readable file is, why ``torch.load(weights_only=True)`` failed, and whether weights or logits
hold NaN or inf (a model with them gives results that look right and are not)."""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteError", "not_a_file", "load_error", "nonfinite_entry", "check_finite",
           "check_finite_logits"]


class NonFiniteError(ValueError):
    """Weights or logits hold NaN or inf."""


def not_a_file(path: str | os.PathLike) -> str | None:
    """``None`` for a regular file (or a link to one); else what ``path`` is, for a message:
    ``"does not exist"``, ``"is a folder, not a file"``, ``"is a named pipe (fifo), not a
    regular file"``, ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exn:
        return f"cannot be read ({exn.strerror or exn})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "is a folder, not a file"),
             (stat.S_ISFIFO, "is a named pipe (fifo), not a regular file"),
             (stat.S_ISSOCK, "is a socket, not a regular file"),
             (stat.S_ISCHR, "is a character device, not a regular file"),
             (stat.S_ISBLK, "is a block device, not a regular file"))
    return next((text for test, text in kinds if test(mode)), "is not a regular file")


def load_error(path: str | os.PathLike, err: BaseException) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` raised ``err``: a pickle
    that holds something other than tensors and plain containers (it could run code) is
    refused; anything else is a truncated or corrupt file."""
    first = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).lower() \
            or "weights only load failed" in str(err).lower():
        return (f"{path} holds Python objects that weights_only=True refuses to load (a pickle "
                f"that could run code): {first}")
    return f"{path} is unreadable (truncated or corrupt?): {type(err).__name__}: {first}"


def nonfinite_entry(state: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """``(key, non-finite values, values)`` of the first floating tensor of ``state`` that
    holds NaN or inf, in ``state``'s order; ``None`` when all are finite."""
    for key, value in state.items():
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return key, bad, value.numel()
    return None


def check_finite(state: Mapping[str, Any], source: str | Path) -> None:
    """Raise :class:`NonFiniteError` naming ``source`` (e.g. the file) and the first key of
    ``state`` whose tensor holds NaN or inf."""
    found = nonfinite_entry(state)
    if found is not None:
        key, bad, total = found
        raise NonFiniteError(f"{source}: non-finite weights (NaN or inf): {key!r} has {bad} of "
                             f"{total} values non-finite; refusing to load a model that would "
                             "give meaningless scores")


def check_finite_logits(logits: Tensor, what: str, keys: list[str] | None = None) -> None:
    """Raise :class:`NonFiniteError` if ``logits`` ``[B, classes]`` hold NaN or inf; ``what``
    names the model (its file), ``keys`` the batch's samples (the first bad ones are named)."""
    bad = ~torch.isfinite(logits.detach())
    if not bool(bad.any()):
        return
    rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist() \
        if bad.dim() else [0]
    names = [keys[i] for i in rows[:5]] if keys else rows[:5]
    raise NonFiniteError(f"{what}: the model gave non-finite logits (NaN or inf) for "
                         f"{len(rows)} sample(s), e.g. {names}; its scores would be meaningless "
                         "(weights or inputs out of range?)")

"""Distributed set-up for ``torchrun``: nccl on CUDA, gloo on CPU, one process per GPU."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup_distributed", "cleanup_distributed", "all_reduce_sum",
           "gather_objects", "barrier", "PeerLostError", "peer_errors"]

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto", timeout: float = 1800.0) -> DistEnv:
    """Read torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), pick the
    device and initialise the process group when more than one process runs.

    ``timeout`` (seconds, ``dist_timeout`` in the training config) bounds the set-up and every
    collective: when a node is lost without closing its connections (frozen, cut off), the
    others fail with a ``DistBackendError`` after this long instead of waiting forever (a
    killed node's peers fail at once: the connection closes)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"dist_timeout: expected a number of seconds > 0, got {timeout!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        log.info("rank %d/%d initialised (%s, %s, timeout %g s)", rank, world, backend, dev,
                 timeout)
    return DistEnv(rank, world, local, dev)


class PeerLostError(RuntimeError):
    """Another process of the ``torchrun`` job went away (killed, crashed, cut off or frozen)
    while this one waited for it in a collective."""


# Messages of the backends' errors when a peer closes its connections or does not answer.
_PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "timed out",
               "broken pipe", "socket timeout")


@contextlib.contextmanager
def peer_errors(timeout: float) -> Iterator[None]:
    """Turn the backend error of a lost peer into a :class:`PeerLostError` that says what
    happened and what to do (``timeout``: the ``dist_timeout`` in use); without a process
    group, a no-op."""
    try:
        yield
    except Exception as exn:
        if not (dist.is_available() and dist.is_initialized()):
            raise
        text = str(exn).strip().splitlines()[-1] if str(exn).strip() else repr(exn)
        text = text.split(" This is typically caused by")[0].rstrip(". ")  # gloo's advice
        distributed = isinstance(exn, getattr(dist, "DistError", ())) or (
            isinstance(exn, RuntimeError) and any(s in str(exn).lower() for s in _PEER_SIGNS))
        if not distributed:
            raise
        raise PeerLostError(
            f"rank {dist.get_rank()}/{dist.get_world_size()}: another process of the job was "
            f"lost (killed or crashed: connection closed; frozen or cut off: no reply within "
            f"dist_timeout={timeout:g} s): {text[:300]}. Restart every node with --resume auto "
            "to continue from the last checkpoint") from exn


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """``all_gather_object`` (a one-element list when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

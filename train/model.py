"""The model a run trains: built from a config, loaded from a checkpoint, found again inside its
DDP / ``torch.compile`` wrappers; TSM's partial BatchNorm; the distillation teachers."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import CheckpointError, checkpoint_config, load_checkpoint, load_model_state
from .config import TrainConfig, config_from_dict
from .dist import DistEnv

__all__ = ["build_model", "load_trained", "unwrap", "ddp_of", "dyreg_blocks", "needs_regions",
           "freeze_partial_bn", "load_teachers"]


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The video model of ``cfg.model`` (a :mod:`dyreg_pyg.models` preset + overrides), built
    for clips of ``cfg.data.num_frames`` frames (``model.overrides.num_frames``, when given,
    must agree: :func:`~train.config.validate`)."""
    from dyreg_pyg.models import build_preset

    kwargs = dict(cfg.model.overrides)
    kwargs.setdefault("num_frames", cfg.data.num_frames)
    kwargs["num_classes"] = num_classes
    if cfg.model.pretrained_file:
        kwargs["pretrained_file"] = cfg.model.pretrained_file
    return build_preset(cfg.model.preset, **kwargs)


def load_trained(checkpoint: str | Path, val: str, num_clips: int = 1, num_crops: int = 1,
                 overrides: list[str] | None = None) -> tuple[nn.Module, TrainConfig, int]:
    """A trained run's model (weights loaded, on the CPU), its config pointed at the
    validation shards ``val`` with the given views, and its number of classes."""
    from .config import apply_overrides

    ck = load_checkpoint(checkpoint)
    cfg = config_from_dict(apply_overrides(checkpoint_config(ck), list(overrides or [])))
    cfg.data.val, cfg.data.num_clips, cfg.data.num_crops = val, num_clips, num_crops
    model = build_model(cfg, ck["num_classes"])
    load_model_state(model, ck["model"], str(checkpoint))
    return model, cfg, ck["num_classes"]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any ``torch.compile`` and DDP wrappers (fit builds
    ``torch.compile(DDP(model))``)."""
    while True:
        if isinstance(model, DDP):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def ddp_of(model: nn.Module) -> DDP | None:
    """The DDP wrapper of ``model`` (also inside ``torch.compile``), or ``None``."""
    while not isinstance(model, DDP):
        if not hasattr(model, "_orig_mod"):
            return None
        model = model._orig_mod
    return model


def dyreg_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The DyReg blocks of the (wrapped) model by name; ``{}`` for a model without any."""
    m = unwrap(model)
    return m.dyreg_blocks() if hasattr(m, "dyreg_blocks") else {}


def needs_regions(model: nn.Module) -> bool:
    """Whether the model's DyReg blocks take external regions (the oracle)."""
    m = unwrap(model)
    return bool(getattr(m, "needs_regions", lambda: False)())


def _is_dyreg_module(m: nn.Module) -> bool:
    """A module of the DyReg library itself (a block, its graph module, region branch,
    layers), as opposed to the backbone it is inserted in (``dyreg_pyg.models`` wraps
    backbones and holds no DyReg norms of its own)."""
    name = type(m).__module__
    return name.startswith("dyreg_pyg.") and not name.startswith("dyreg_pyg.models")


def freeze_partial_bn(model: nn.Module) -> int:
    """TSM's partial BatchNorm, on the backbone only: every backbone BatchNorm but the first
    goes to eval mode with frozen affine parameters (call after ``model.train()``). The norms
    of the DyReg blocks (write-back, region branch) are new layers: they keep training.
    Returns how many were frozen."""
    frozen = 0
    first = True

    def visit(m: nn.Module) -> None:
        nonlocal frozen, first
        if _is_dyreg_module(m):
            return  # the whole DyReg subtree keeps its norms training
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if first:
                first = False
            else:
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
                frozen += 1
        for child in m.children():
            visit(child)

    visit(unwrap(model))
    return frozen


def load_teachers(cfg: TrainConfig, env: DistEnv) -> dict[str, nn.Module]:
    """Single-module teacher models (``distill.teachers``), frozen, by the name of the
    student block they supervise."""
    teachers = {}
    for block_name, path in cfg.distill.teachers.items():
        ck = load_checkpoint(path)
        tcfg = config_from_dict(checkpoint_config(ck))
        teacher = build_model(tcfg, ck["num_classes"])
        load_model_state(teacher, ck["model"], f"teacher {path}")
        teacher.to(env.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if block_name not in teacher.dyreg_blocks():
            raise CheckpointError(
                f"distill.teachers: teacher {path} has no DyReg block {block_name!r}; it has "
                f"{sorted(teacher.dyreg_blocks())}"
            )
        teachers[block_name] = teacher
    return teachers

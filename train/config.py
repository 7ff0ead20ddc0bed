"""Training configuration: dataclasses, YAML presets and ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "DistillConfig", "TrainConfig",
    "load_config", "apply_overrides", "config_to_dict", "config_from_dict",
]

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Where the shards are and how clips are sampled."""

    dataset: str = "syncmnist"          # syncmnist | something
    train: str = ""                     # shard pattern/URL, brace notation allowed
    val: str = ""
    num_frames: int = 10
    crop_size: int | None = None        # None: keep the stored frame size (syncmnist)
    batch_size: int = 16
    eval_batch_size: int | None = None
    num_workers: int = 2
    in_memory: bool = False             # decode the training split once, keep it in RAM
                                        # (no training augmentation: MultiSyncMNIST)
    epoch_size: int | None = None       # training samples per epoch (None: the manifest's)
    shuffle: int = 1000                 # shuffle buffer
    num_clips: int = 1                  # evaluation: temporal clips
    num_crops: int = 1                  # evaluation: spatial crops (1 or 3)
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])
    num_classes: int | None = None      # None: read from the shards' manifest
    train_shards: str = "resample"      # resample (passes, own order) | split (each sample once
                                        # per epoch over all ranks: shards split by node/worker)
    read_timeout: float = 60.0          # s a remote shard (http(s)://, pipe:) may send no byte


@dataclass
class ModelConfig:
    """A preset of :mod:`dyreg_pyg.models` plus overrides of its arguments."""

    preset: str = "syncmnist_r18_dyreg"
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained_file: str | None = None


@dataclass
class OptimConfig:
    """Optimiser and schedule (paper: SGD 1e-3, momentum 0.9, lr / 10 on plateau x3)."""

    name: str = "sgd"                   # sgd | adam | adamw
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"           # plateau | cosine | step | onecycle | none
    plateau_patience: int = 2           # epochs without val top-1 gain before lr / 10
    max_reductions: int = 3
    step_epochs: list[int] = field(default_factory=lambda: [20, 30, 40])
    warmup_steps: int = 0
    clip_grad: float | None = 20.0
    accumulate: int = 1                 # gradient accumulation steps
    # learning-rate multipliers by parameter-name part, e.g. {"region_generator": 10.0}:
    # a parameter takes the first entry whose key occurs in its name (default 1)
    lr_mult: dict[str, float] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Offset distillation kick-start (paper, implementation details); off by default."""

    teachers: dict[str, str] = field(default_factory=dict)  # block name -> checkpoint file
    weight: float = 1.0
    fraction: float = 0.1               # of the total training steps


@dataclass
class TrainConfig:
    """Everything ``python -m train fit`` needs."""

    out_dir: str = "runs/default"
    epochs: int = 10
    max_steps: int | None = None        # stop early after this many optimiser steps
    max_minutes: float | None = None    # stop (and validate) after this much wall time
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    precision: str = "fp32"             # fp32 | bf16 (CUDA or CPU autocast) | fp16 (CUDA;
                                        # on the CPU: fp32, with a warning)
    sync_bn: bool = False
    partial_bn: bool = False            # TSM: freeze all BatchNorm but the first
    ckpt_every: int = 200               # steps between `last` checkpoints
    log_every: int = 10
    tb_regions: int = 2                 # validation clips whose region pictures (true and
                                        # predicted class on them) go to TensorBoard; 0: none
    progress: bool | None = None        # progress bar: null = only when stderr is a terminal,
                                        # true / false (YAML's on / off too) = always / never
    eval_every: int = 1                 # epochs
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None          # torch.set_num_threads on CPU
    dist_timeout: float = 1800.0        # s: torchrun process group set-up and collectives (a
                                        # lost or frozen node fails the others after this)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _valid_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def config_from_dict(values: dict[str, Any], cls: type = TrainConfig, prefix: str = "") -> Any:
    """Build a (nested) config dataclass; unknown keys raise with the valid ones listed."""
    if not isinstance(values, dict):
        raise ValueError(f"config {prefix or 'root'}: expected a mapping, got {type(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"config: unknown keys {[prefix + k for k in unknown]}; valid keys: "
            f"{_valid_keys(cls, prefix)}"
        )
    kwargs = {}
    for k, v in values.items():
        if dataclasses.is_dataclass(hints[k]):
            kwargs[k] = config_from_dict(v or {}, hints[k], f"{prefix}{k}.")
        else:
            kwargs[k] = _checked(f"{prefix}{k}", v, hints[k])
    return cls(**kwargs)


def _describe(hint: Any) -> str:
    """``int | None`` -> "an integer or null", for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" \
            if args else "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` of the config field ``name`` (an integral float is an
    integer, an integer a float); anything else raises ``ValueError`` naming the field, the
    expected type and the value."""
    def bad() -> ValueError:
        return ValueError(f"config: {name}: expected {_describe(hint)}, got {value!r} "
                          f"({type(value).__name__})")

    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _checked(name, value, arg)
            except ValueError:
                pass
        raise bad()
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad()
        return [_checked(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)] if args \
            else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return {str(k): _checked(f"{name}.{k}", v, args[1]) for k, v in value.items()} if args \
            else dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise bad()
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a YAML number where a name is expected: out_dir=2024
        raise bad()
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _parse_value(text: str) -> Any:
    """YAML scalar, plus numbers YAML 1.1 leaves as strings (``1e-3``)."""
    value = yaml.safe_load(text) if text != "" else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict.

    Keys must name a config field (``model.overrides.*``, ``distill.teachers.*`` and
    ``optim.lr_mult.*`` are free-form); a typo raises with the list of valid keys.
    """
    valid = set(_valid_keys(TrainConfig))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        free = key.startswith(("model.overrides.", "distill.teachers.", "optim.lr_mult."))
        if key not in valid and not free:
            raise ValueError(f"--set: unknown key {key!r}; valid keys: {sorted(valid)}")
        node = values
        parts = key.split(".")
        for head in ("distill.teachers.", "optim.lr_mult."):  # names may hold dots: layer2.2
            if key.startswith(head):
                parts = [*head.rstrip(".").split("."), key.removeprefix(head)]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set: {key!r} goes through a non-mapping value")
        node[parts[-1]] = _parse_value(text)
    return values


def resolve_config_path(path: str | Path) -> Path:
    """A YAML path, or the name of a preset in ``train/configs`` (with or without .yaml)."""
    p = Path(path)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.exists():
            return cand
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ValueError(f"--config: {path!s} not found; presets in train/configs: {presets}")


def _read_yaml(path: Path) -> dict[str, Any]:
    """The settings of a YAML config file: a mapping at its top level (empty: ``{}``). A
    syntax error names the file, line and column; another top level names the file and what
    it holds."""
    try:
        with open(path) as fh:
            values = yaml.safe_load(fh)
    except yaml.YAMLError as exn:
        mark = getattr(exn, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exn, "problem", None) or str(exn).splitlines()[0]
        raise ValueError(f"--config: {path}: YAML syntax error{where}: {what}") from exn
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config: {path}: expected a mapping of settings (key: value) at the "
                         f"top level, got a {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML preset (or defaults), apply ``--set`` overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(resolve_config_path(path))
    values = apply_overrides(values, overrides or [])
    cfg = config_from_dict(values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject contradictory settings early."""
    checks = [
        (cfg.precision in ("fp32", "bf16", "fp16"), f"precision: fp32|bf16|fp16, got "
                                                     f"{cfg.precision!r}"),
        (cfg.device in ("auto", "cpu", "cuda"), f"device: auto|cpu|cuda, got {cfg.device!r}"),
        (cfg.optim.name in ("sgd", "adam", "adamw"), f"optim.name: sgd|adam|adamw, got "
                                                      f"{cfg.optim.name!r}"),
        (cfg.optim.schedule in ("plateau", "cosine", "step", "onecycle", "none"),
         f"optim.schedule: plateau|cosine|step|onecycle|none, got {cfg.optim.schedule!r}"),
        (cfg.optim.accumulate >= 1, f"optim.accumulate: >= 1, got {cfg.optim.accumulate}"),
        (all(isinstance(v, (int, float)) and v > 0 for v in cfg.optim.lr_mult.values()),
         f"optim.lr_mult: positive numbers by parameter-name part, got {cfg.optim.lr_mult}"),
        (cfg.data.num_crops in (1, 3), f"data.num_crops: 1 or 3, got {cfg.data.num_crops}"),
        (cfg.data.batch_size >= 1, f"data.batch_size: >= 1, got {cfg.data.batch_size}"),
        (cfg.epochs >= 1, f"epochs: >= 1, got {cfg.epochs} (max_steps and max_minutes only "
                          "stop a run early: it trains for at most epochs epochs)"),
        (cfg.max_steps is None or cfg.max_steps >= 1,
         f"max_steps: null or >= 1, got {cfg.max_steps}"),
        (cfg.max_minutes is None or cfg.max_minutes > 0,
         f"max_minutes: null or > 0, got {cfg.max_minutes}"),
        (min(cfg.ckpt_every, cfg.log_every, cfg.eval_every) >= 1,
         f"ckpt_every, log_every, eval_every: >= 1, got {cfg.ckpt_every}, {cfg.log_every}, "
         f"{cfg.eval_every}"),
        (cfg.data.num_frames >= 1, f"data.num_frames: >= 1, got {cfg.data.num_frames}"),
        (cfg.model.overrides.get("num_frames", cfg.data.num_frames) == cfg.data.num_frames,
         f"model.overrides.num_frames: the model is built for data.num_frames="
         f"{cfg.data.num_frames}; got model.overrides.num_frames="
         f"{cfg.model.overrides.get('num_frames')} (drop it or make them equal)"),
        (0.0 <= cfg.distill.fraction <= 1.0, "distill.fraction: in [0, 1]"),
        (len(cfg.data.mean) == len(cfg.data.std), "data.mean and data.std: same length"),
        (not cfg.data.in_memory or (cfg.data.dataset == "syncmnist" and
                                    cfg.data.crop_size is None),
         "data.in_memory: only for data without training augmentation (dataset 'syncmnist', "
         f"crop_size None), got dataset {cfg.data.dataset!r}, crop_size {cfg.data.crop_size}"),
        (not (cfg.data.in_memory and cfg.data.epoch_size),
         "data.in_memory: an epoch is the decoded split; data.epoch_size must be null, got "
         f"{cfg.data.epoch_size}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"config: {msg}")

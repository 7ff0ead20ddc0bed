"""The authors' released checkpoints (github bit-ml/DyReg-GNN) in ``python -m train evaluate
--official CONFIG``: the model of a ``flavor="authors"`` config with their weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .config import TrainConfig, load_config

__all__ = ["load_official_run"]


def load_official_run(checkpoint: str | Path, config: str, val: str, num_clips: int = 1,
                      num_crops: int = 1, overrides: list[str] | None = None
                      ) -> tuple[nn.Module, TrainConfig, int]:
    """The model of ``config`` (a YAML file or a name in train/configs, e.g.
    ``tsm_r50_dyreg_authors``) with the authors' ``checkpoint`` loaded by
    :func:`dyreg_pyg.compat.load_official`, the config pointed at the validation shards
    ``val`` with the given views, and its number of classes."""
    from dyreg_pyg.compat import load_official

    from .model import build_model

    cfg = load_config(config, overrides)
    cfg.data.val, cfg.data.num_clips, cfg.data.num_crops = val, num_clips, num_crops
    cfg.model.pretrained_file = None  # every backbone weight comes from the checkpoint
    model = build_model(cfg, cfg.data.num_classes)
    load_official(model, checkpoint)
    return model, cfg, cfg.data.num_classes

"""Training checkpoints written before format 2 (issue 35: PyG layers with ``edge_dim`` get
the region graph's ``edge_attr``) still load: their DyReg blocks are rebuilt without edge
geometry, with the state-dict keys they were saved with."""

import torch

from train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from train.config import config_to_dict, load_config
from train.loop import build_model, load_trained


def _gat_run(tmp_path, edge_geometry: bool):
    cfg = load_config("syncmnist_demo", [
        "data.val=unused.tar", "data.num_frames=4", "model.overrides.num_frames=4",
        "model.overrides.input_size=32", "model.overrides.dyreg.gnn=GATConv",
        f"model.overrides.dyreg.edge_geometry={str(edge_geometry).lower()}"])
    torch.manual_seed(0)
    return cfg, build_model(cfg, 56)


def test_a_checkpoint_without_format_loads_without_edge_geometry(tmp_path):
    cfg, old_model = _gat_run(tmp_path, edge_geometry=False)  # as built before issue 35
    values = config_to_dict(cfg)
    del values["model"]["overrides"]["dyreg"]["edge_geometry"]  # the field did not exist
    old = tmp_path / "old.pt"
    torch.save({"model": old_model.state_dict(), "config": values, "num_classes": 56}, old)

    model, loaded_cfg, _ = load_trained(old, "val.tar")
    assert loaded_cfg.model.overrides["dyreg"]["edge_geometry"] is False
    assert set(model.state_dict()) == set(old_model.state_dict())
    assert not any("lin_edge" in k for k in model.state_dict())

    # the same config read as format 2 builds today's layer (edge_dim: lin_edge weights), so
    # the old weights do not fit it: the format is what tells the two apart
    new = tmp_path / "new.pt"
    save_checkpoint({"model": old_model.state_dict(), "config": values, "num_classes": 56}, new)
    assert load_checkpoint(new)["format"] == CHECKPOINT_FORMAT == 2
    assert "edge_geometry" not in checkpoint_config(load_checkpoint(new))["model"][
        "overrides"]["dyreg"]
    try:
        load_trained(new, "val.tar")
    except CheckpointError as err:
        assert "lin_edge" in str(err)
    else:
        raise AssertionError("a format-2 checkpoint without lin_edge weights loaded")

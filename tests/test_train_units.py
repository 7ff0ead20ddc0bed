"""Unit tests of the training package that need no data: config, checkpoints, schedules."""

import pytest
import torch

from train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
)
from train.config import apply_overrides, config_from_dict, load_config
from train.optim import PlateauSchedule, make_optimizer


def test_presets_load_and_overrides_apply():
    cfg = load_config("syncmnist_demo", ["optim.lr=0.01", "data.batch_size=4",
                                         "model.overrides.drop_rate=0.2"])
    assert cfg.optim.lr == 0.01 and cfg.data.batch_size == 4
    assert cfg.model.overrides == {"drop_rate": 0.2}
    for name in ("syncmnist_r18_dyreg", "ssv2_tsm_r50_dyreg", "ssv1_tsm_r50_dyreg",
                 "ssv2_tsm_r50_dyreg_r4"):
        assert load_config(name).model.preset.startswith(("syncmnist", "tsm"))


def test_bad_config_keys_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key 'optim.lrr'.*optim.lr"):
        load_config("syncmnist_demo", ["optim.lrr=0.1"])
    with pytest.raises(ValueError, match=r"unknown keys \['data.frames'\]"):
        config_from_dict({"data": {"frames": 3}})
    with pytest.raises(ValueError, match="precision"):
        load_config(None, ["precision=fp8"])
    with pytest.raises(ValueError, match="presets in train/configs"):
        load_config("no_such_preset")
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["optim.lr"])


def test_checkpoint_atomic_roundtrip_and_truncation(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "last.pt"
    save_checkpoint({"model": model.state_dict(), "rng": capture_rng()}, path)
    good = path.read_bytes()
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["weight"], model.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    (tmp_path / "bad.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    assert path.read_bytes() == good


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    from dyreg_pyg._io import write_atomic

    path = tmp_path / "clips.pt"
    save_checkpoint({"v": torch.arange(3)}, path)
    good = path.read_bytes()

    def dies(fh):
        fh.write(b"half a file")
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, dies)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["clips.pt"]
    write_atomic(tmp_path / "sub" / "x.json", lambda fh: fh.write("{}"), binary=False)
    assert (tmp_path / "sub" / "x.json").read_text() == "{}"


def test_checkpoint_refuses_other_architecture():
    with pytest.raises(CheckpointError, match=r"missing keys: \[0.bias, 0.weight\]; "
                                              r"unexpected keys: \[bias, weight\]"):
        load_model_state(torch.nn.Sequential(torch.nn.Linear(3, 2)),
                         torch.nn.Linear(3, 2).state_dict())


def test_rng_capture_restore():
    state = capture_rng()
    a = torch.rand(3)
    restore_rng(state)
    assert torch.equal(torch.rand(3), a)


def test_plateau_schedule_at_most_three_reductions():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PlateauSchedule(opt, patience=0, max_reductions=3)
    for metric in [0.5, 0.4, 0.4, 0.4, 0.4, 0.4]:
        sched.step_epoch(metric)
    assert sched.reductions == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_teacher_block_names_keep_their_dots():
    cfg = load_config("ssv2_tsm_r50_dyreg", ["distill.teachers.layer2.2=a.pt",
                                             "distill.teachers.layer4.1=b.pt"])
    assert cfg.distill.teachers == {"layer2.2": "a.pt", "layer4.1": "b.pt"}
    # other keys still nest: a dyreg override is a dict merged into the preset's
    cfg = load_config("syncmnist_demo", ["model.overrides.dyreg.iterations=1"])
    assert cfg.model.overrides == {"dyreg": {"iterations": 1}}


def test_lr_mult_puts_matching_parameters_in_scaled_groups():
    net = torch.nn.Sequential()
    net.add_module("backbone", torch.nn.Linear(4, 4))
    net.add_module("region_generator", torch.nn.Linear(4, 2))
    cfg = load_config("syncmnist_demo", ["optim.name=adam", "optim.lr=0.01",
                                         "optim.weight_decay=0.1",
                                         "optim.lr_mult.region_generator=10"])
    assert cfg.optim.lr_mult == {"region_generator": 10}
    opt = make_optimizer(cfg, net)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert by_id[id(net.backbone.weight)] == (0.01, 0.1)
    assert by_id[id(net.backbone.bias)] == (0.01, 0.0)
    assert by_id[id(net.region_generator.weight)] == (pytest.approx(0.1), 0.1)
    assert by_id[id(net.region_generator.bias)] == (pytest.approx(0.1), 0.0)
    assert len(opt.param_groups) == 4 and opt.param_groups[0]["lr"] == 0.01
    # without multipliers: the two groups of before (decay first), so old checkpoints load
    plain = make_optimizer(load_config("syncmnist_demo", ["optim.weight_decay=0.1"]), net)
    assert [g["weight_decay"] for g in plain.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="match no trainable parameter"):
        make_optimizer(load_config("syncmnist_demo", ["optim.lr_mult.regoin=10"]), net)
    with pytest.raises(ValueError, match="optim.lr_mult: positive"):
        load_config("syncmnist_demo", ["optim.lr_mult.region_generator=-1"])


def test_unwrap_sees_through_compile_aroundddp_of(tmp_path):
    """fit builds torch.compile(DDP(model)): the trainer must still find the user's model
    (its DyReg blocks, whether it needs regions) and the DDP wrapper (for no_sync)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dyreg_pyg.models import build_preset
    from train.model import ddp_of, dyreg_blocks, unwrap

    model = build_preset("syncmnist_r18_oracle")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = DDP(model)
        wrapped = torch.compile(ddp, dynamic=False)  # compiles lazily: nothing runs here
        assert unwrap(wrapped) is model and ddp_of(wrapped) is ddp
        assert unwrap(ddp) is model and ddp_of(ddp) is ddp
        assert list(dyreg_blocks(wrapped)) == ["layer2"] and unwrap(wrapped).needs_regions()
    finally:
        dist.destroy_process_group()
    compiled = torch.compile(model)
    assert unwrap(compiled) is model and ddp_of(compiled) is None and ddp_of(model) is None


def test_scalar_log_carries_the_accuracy_since_the_last_log_and_resets_it():
    from types import SimpleNamespace

    from train.loop import _EpochMeter, _report_step

    logged = []
    run = SimpleNamespace(
        cfg=SimpleNamespace(log_every=2, ckpt_every=1000),
        env=SimpleNamespace(is_main=True, world_size=1),
        state=SimpleNamespace(step=4),
        logger=SimpleNamespace(scalars=lambda step, values: logged.append((step, values))),
        optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}]))
    # 8 videos this epoch, 6 right; the 4 since the last log: 1 right
    meter = _EpochMeter(t0=0.0, seen=8, correct=6, loss_sum=4.0, recent_seen=4,
                        recent_correct=1)
    _report_step(run, meter, None)
    ((step, values),) = logged
    assert step == 4 and values["train/top1"] == 0.75 and values["train/top1_recent"] == 0.25
    assert (meter.recent_seen, meter.recent_correct) == (0, 0)
    assert (meter.seen, meter.correct) == (8, 6)  # the epoch's figures are kept
    run.state.step = 5  # not a logging step: nothing logged, nothing reset
    meter.recent_seen, meter.recent_correct = 4, 3
    _report_step(run, meter, None)
    assert len(logged) == 1 and (meter.recent_seen, meter.recent_correct) == (4, 3)


def test_the_something_debug_preset_is_laptop_sized_and_runs():
    """ssv2_debug: the SSv2 pipeline without the dozen --sets it took to fit on a laptop."""
    from train.model import build_model

    cfg = load_config("ssv2_debug")
    big = load_config("ssv2_tsm_r50_dyreg")
    assert cfg.data.dataset == big.data.dataset == "something"
    assert (cfg.data.num_frames, cfg.data.crop_size, cfg.data.batch_size) == (8, 112, 2)
    assert cfg.model.pretrained_file is None and cfg.data.epoch_size is None
    assert cfg.data.num_clips == cfg.data.num_crops == 1
    model = build_model(cfg, 174)
    assert model.num_frames == 8
    with torch.no_grad():
        logits = model.eval()(torch.randn(1, 8, 3, 112, 112))
    assert logits.shape == (1, 174) and torch.isfinite(logits).all()

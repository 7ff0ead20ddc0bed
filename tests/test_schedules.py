"""The learning-rate schedules give the learning rates of before, step by step, and resume.

``FROZEN`` holds, for each schedule, the lr of the first parameter group at every optimiser
step (spe = 5 steps per epoch, 4 epochs, SGD lr 1e-3; a second group at 10x), computed with
the trainer's own schedule code before it moved onto ``torch.optim.lr_scheduler``
(train/loop.py ``_lr_factor`` + ``PlateauSchedule`` at commit d839334, driven the way ``fit``
drove them; checked against ``fit``'s logged ``train/lr``). The plateau cases take the
validation top-1 of each epoch from ``metrics``.
"""

import copy

import pytest
import torch

from train.config import load_config
from train.optim import Schedules

SPE, EPOCHS = 5, 4

FROZEN = {
    'cosine': (['optim.schedule=cosine'], None, [
        0.001, 0.001, 0.0009938441702975688,
        0.0009755282581475768, 0.0009455032620941839, 0.0009045084971874737,
        0.0008535533905932737, 0.0007938926261462366, 0.0007269952498697733,
        0.0006545084971874737, 0.0005782172325201155, 0.0005,
        0.0004217827674798845, 0.00034549150281252633, 0.00027300475013022663,
        0.00020610737385376348, 0.00014644660940672628, 9.549150281252633e-05,
        5.449673790581611e-05, 2.4471741852423235e-05,
    ]),
    'cosine_warmup4': (['optim.schedule=cosine', 'optim.warmup_steps=4'], None, [
        0.001, 0.00025, 0.0004969220851487844,
        0.0007316461936106827, 0.0009455032620941839, 0.0009045084971874737,
        0.0008535533905932737, 0.0007938926261462366, 0.0007269952498697733,
        0.0006545084971874737, 0.0005782172325201155, 0.0005,
        0.0004217827674798845, 0.00034549150281252633, 0.00027300475013022663,
        0.00020610737385376348, 0.00014644660940672628, 9.549150281252633e-05,
        5.449673790581611e-05, 2.4471741852423235e-05,
    ]),
    'cosine_max_steps13': (['optim.schedule=cosine', 'max_steps=13'], None, [
        0.001, 0.001, 0.000985470908713026,
        0.0009427280128266049, 0.0008742553740855505, 0.0007840323733655779,
        0.0006773024435212678, 0.0005602683401276614, 0.00043973165987233853,
        0.00032269755647873217, 0.00021596762663442215, 0.0001257446259144494,
        5.72719871733951e-05,
    ]),
    'onecycle': (['optim.schedule=onecycle'], None, [
        0.001, 4e-05, 0.0002,
        0.00035999999999999997, 0.0005200000000000001, 0.00068,
        0.0008400000000000001, 0.001001, 0.0009884639560909117,
        0.0009514844339512095, 0.000891915741234015, 0.0008127449009293667,
        0.0007179418695587789, 0.0006122604669781572, 0.000501,
        0.0003897395330218427, 0.000284058130441221, 0.00018925509907063325,
        0.000110084258765985, 5.051556604879037e-05,
    ]),
    'step_1_3': (['optim.schedule=step', 'optim.step_epochs=[1,3]'], None, [
        0.001, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.0001, 0.0001, 0.0001,
        0.0001, 0.0001, 0.0001,
        0.0001, 0.0001, 0.0001,
        0.0001, 1.0000000000000003e-05, 1.0000000000000003e-05,
        1.0000000000000003e-05, 1.0000000000000003e-05,
    ]),
    'step_1_3_warmup4': (
        ['optim.schedule=step', 'optim.step_epochs=[1,3]', 'optim.warmup_steps=4'],
        None, [
        0.001, 0.00025, 0.0005,
        0.00075, 0.001, 0.001,
        0.0001, 0.0001, 0.0001,
        0.0001, 0.0001, 0.0001,
        0.0001, 0.0001, 0.0001,
        0.0001, 1.0000000000000003e-05, 1.0000000000000003e-05,
        1.0000000000000003e-05, 1.0000000000000003e-05,
    ]),
    'none_warmup4': (['optim.schedule=none', 'optim.warmup_steps=4'], None, [
        0.001, 0.00025, 0.0005,
        0.00075, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.001, 0.001,
    ]),
    'plateau_max2': (
        ['optim.schedule=plateau', 'optim.plateau_patience=0', 'optim.max_reductions=2'],
        [0.5, 0.5, 0.5, 0.5], [
        0.001, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.001, 0.001, 0.001,
        0.001, 0.0001, 0.0001,
        0.0001, 0.0001, 0.0001,
        1e-05, 1e-05, 1e-05,
        1e-05, 1e-05,
    ]),
    'plateau_warmup12': (
        ['optim.schedule=plateau', 'optim.plateau_patience=0', 'optim.warmup_steps=12'],
        [0.5, 0.4, 0.6, 0.6], [
        0.001, 8.333333333333333e-05, 0.00016666666666666666,
        0.00025, 0.0003333333333333333, 0.0004166666666666667,
        0.0005, 0.0005833333333333334, 0.0006666666666666666,
        0.00075, 8.333333333333334e-05, 9.166666666666667e-05,
        0.0001, 0.0001, 0.0001,
        0.0001, 0.0001, 0.0001,
        0.0001, 0.0001,
    ]),
}


def _optimizer(lr=1e-3):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [a], "lr": lr}, {"params": [b], "lr": lr * 10}], lr=lr)


def _drive(opt, sched, metrics, start, stop):
    """Optimiser steps ``start .. stop - 1`` the way ``fit`` takes them; the lrs used."""
    used = []
    for step in range(start, stop):
        used.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
        if (step + 1) % SPE == 0:  # a whole epoch, then its validation
            sched.epoch_end(metrics[step // SPE] if metrics else None)
    return used


def _config(name):
    overrides, metrics, expected = FROZEN[name]
    cfg = load_config("syncmnist_demo", ["optim.name=sgd", "optim.lr=0.001", *overrides])
    return cfg, metrics, expected, cfg.max_steps or SPE * EPOCHS


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_schedules_give_the_learning_rates_of_before(name):
    cfg, metrics, expected, total = _config(name)
    opt = _optimizer()
    used = _drive(opt, Schedules(cfg, opt, total, SPE), metrics, 0, total)
    assert [g0 for g0, _ in used] == pytest.approx(expected, rel=1e-12, abs=0)
    assert [g1 for _, g1 in used] == pytest.approx([10 * x for x in expected], rel=1e-12, abs=0)


@pytest.mark.parametrize("name", ["cosine_warmup4", "onecycle", "step_1_3", "plateau_max2",
                                  "plateau_warmup12"])
@pytest.mark.parametrize("old_format", [False, True])
def test_resume_continues_the_uninterrupted_rates(name, old_format):
    """A run stopped after 7 steps (mid-epoch) and resumed from its optimiser state and
    plateau entry uses the uninterrupted run's lrs. ``old_format``: the optimiser state as
    checkpoints written before the move hold it (no ``initial_lr`` in the groups)."""
    cfg, metrics, expected, total = _config(name)
    opt = _optimizer()
    sched = Schedules(cfg, opt, total, SPE)
    _drive(opt, sched, metrics, 0, 7)
    saved_opt, saved_plateau = copy.deepcopy(opt.state_dict()), sched.plateau.state_dict()
    assert set(saved_plateau) == {"best", "bad_epochs", "reductions"}
    if old_format:
        for g in saved_opt["param_groups"]:
            g.pop("initial_lr", None)
    opt = _optimizer()  # a new process: the schedules are built before the state loads
    sched = Schedules(cfg, opt, total, SPE)
    opt.load_state_dict(saved_opt)
    sched.resume(7, saved_plateau)
    used = _drive(opt, sched, metrics, 7, total)
    assert [g0 for g0, _ in used] == pytest.approx(expected[7:], rel=1e-12, abs=0)

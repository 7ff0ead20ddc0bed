"""Issue 33 (items 2, 6, 7, 12, 13): results that must not be wrong while looking right -
class maps compared before scoring, exports that cannot mix two checkpoints, ground-truth
boxes drawn on the frames they belong to, and exported models that run at the trained size
with their preprocessing shipped."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch

from dyreg_pyg.data import ClipLoaderConfig, ShardWriter, make_clip_loader


# ------------------------------------------------------------------ item 7: visualize
def _white_columns(tile: np.ndarray) -> list[int]:
    """Columns of a tile holding a white (ground-truth) pixel."""
    return sorted(set(np.nonzero((tile == 255).all(-1))[1].tolist()))


def test_draw_regions_draws_the_box_of_each_sampled_frame(tmp_path):
    from dyreg_pyg.viz import draw_regions, save_regions_gif

    # 8 video frames 32 px wide; the object (4 px wide) moves 3 px right each frame
    gt = [[[3 * f, 10, 3 * f + 4, 14]] for f in range(8)]
    fidx = [1, 3, 5, 7]  # the loader sampled every second frame
    frames = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    regions = torch.zeros(4, 1, 4)  # a zero-size region (only its centre dot, not white)
    img = np.asarray(draw_regions(frames, regions, None, gt, (32, 32), scale=1,
                                  frame_indices=fidx))
    for k, f in enumerate(fidx):
        cols = _white_columns(img[:, 32 * k:32 * (k + 1)])
        assert (cols[0], cols[-1]) == (3 * f, 3 * f + 3), f"clip position {k} (frame {f})"
    with pytest.raises(ValueError, match="frame 9 has no ground-truth boxes"):
        draw_regions(frames, regions, None, gt, (32, 32), frame_indices=[1, 3, 5, 9])
    from PIL import Image

    gif = Image.open(save_regions_gif(tmp_path / "r.gif", frames, regions, gt, (32, 32),
                                      scale=1, frame_indices=fidx))
    for k, f in enumerate(fidx):  # the GIF takes the same mapping
        gif.seek(k)
        cols = _white_columns(np.asarray(gif.convert("RGB")))
        assert (cols[0], cols[-1]) == (3 * f, 3 * f + 3), f"GIF frame {k} (frame {f})"


def _npy_moving(frames: int, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((frames, h, w, 3), 64, np.uint8), allow_pickle=False)
    return buf.getvalue()


def test_visualize_draws_the_ground_truth_of_the_sampled_frames(tmp_path):
    """Through the loader: a 16-frame video whose box moves, 4 frames sampled; the box drawn
    for clip position k is the stored box of frame ``meta["frame_indices"][k]``."""
    from dyreg_pyg.viz import draw_regions

    n, side = 16, 32
    boxes = [[[2 * f, 8, 2 * f + 2, 12]] for f in range(n)]
    with ShardWriter(tmp_path, "val") as w:
        w.write("moving", {"cls": b"0", "frames.npy": _npy_moving(n, side, side),
                           "json": json.dumps({"boxes": boxes,
                                               "frame_size": [side, side]}).encode()})
    loader = make_clip_loader(str(tmp_path / "val-000000.tar"), "val", ClipLoaderConfig(
        num_frames=4, batch_size=1, dataset="generic", num_classes=3))
    batch = next(iter(loader))
    meta = batch["meta"][0]
    fidx = meta["frame_indices"]
    assert fidx != list(range(4))  # the clip spans the video: position k is not frame k
    img = np.asarray(draw_regions(batch["video"][0], torch.zeros(4, 1, 4), None,
                                  meta["boxes"], tuple(meta["frame_size"]), scale=1,
                                  frame_indices=fidx))
    for k, f in enumerate(fidx):
        cols = _white_columns(img[:, side * k:side * (k + 1)])
        assert (cols[0], cols[-1]) == (2 * f, 2 * f + 1), f"clip position {k} (frame {f})"


# ------------------------------------------------------------------ item 2: class maps
def _npy(frames: int = 4, side: int = 32, value: int = 0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((frames, side, side), value, np.uint8), allow_pickle=False)
    return buf.getvalue()


def _shards(folder, labels: list[int], manifest: dict | None) -> str:
    """Samples the tiny model runs on (4 frames of 32 x 32, 1 channel), with a manifest."""
    from dyreg_pyg.data.shards import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(folder, "val", maxcount=10_000) as w:
        for i, y in enumerate(labels):
            w.write(f"val_{i:04d}", {"frames.npy": _npy(value=10 * i), "cls": str(y).encode()})
        shards = w.close()
    if manifest is not None:
        write_manifest(folder / "val-manifest.json",
                       {**manifest, "num_samples": len(labels), "shards": shards})
    return str(folder / shards[0]["name"])


def _tiny_cfg(tmp_path):
    from train.config import load_config

    return load_config("syncmnist_demo", [
        "data.train=unused.tar", "data.val=unused.tar", f"out_dir={tmp_path / 'run'}",
        "data.num_frames=4", "data.batch_size=2", "data.num_workers=0", "data.epoch_size=4",
        "data.num_classes=3", "epochs=1", "max_steps=2", "threads=1",
        "model.preset=syncmnist_r18_dyreg", "model.overrides.input_size=32"])


def _checkpoint(tmp_path, num_classes: int, names: list[str] | None) -> str:
    from train.checkpoint import save_checkpoint
    from train.config import config_to_dict
    from train.loop import build_model

    cfg = _tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes)
    path = tmp_path / f"ckpt{num_classes}.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": num_classes,
                     **({"class_names": names} if names else {})}, path)
    return str(path)


V2 = ["Approaching [something] with your camera", "Attaching [something] to [something]",
      "Bending [something] so that it deforms"]
V1 = ["Holding something", "Turning something upside down", "Bending something so that it "
      "deforms"]


def test_evaluate_refuses_a_checkpoint_of_another_class_map(tmp_path):
    from train.classmap import ClassMapError
    from train.loop import evaluate

    ckpt = _checkpoint(tmp_path, 3, V2)
    data = _shards(tmp_path / "v1", [0, 1, 2], {"dataset": "something-something-v1",
                                                "num_classes": 3, "class_names": V1})
    with pytest.raises(ClassMapError) as err:
        evaluate(ckpt, data, out=str(tmp_path / "m.json"))
    msg = str(err.value)
    assert "checkpoint has 3 classes" in msg and "something-something-v1" in msg
    assert "3 with 3 names different: first index 0" in msg
    assert repr(V2[0]) in msg and repr(V1[0]) in msg and "--class-map" in msg
    assert not (tmp_path / "m.json").exists()


def test_evaluate_refuses_a_56_class_checkpoint_on_2_class_shards(tmp_path, capsys):
    from train.cli import main

    ckpt = _checkpoint(tmp_path, 56, None)
    data = _shards(tmp_path / "two", [0, 1, 0, 1], {"dataset": "syncmnist", "num_classes": 2})
    rc = main(["evaluate", "--checkpoint", ckpt, "--data", data,
               "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "Traceback" not in err
    assert "the checkpoint has 56 classes" in err and "syncmnist) 2" in err
    assert not (tmp_path / "m.json").exists()
    # names without a count are compared by their number too
    data = _shards(tmp_path / "names", [0, 1], {"class_names": ["a", "b"]})
    rc = main(["evaluate", "--checkpoint", ckpt, "--data", data,
               "--out", str(tmp_path / "m.json")])
    assert rc == 1 and "56 classes" in capsys.readouterr().err


def test_evaluate_passes_identical_class_maps(tmp_path):
    from train.loop import evaluate

    ckpt = _checkpoint(tmp_path, 3, V2)
    data = _shards(tmp_path / "v2", [0, 1, 2, 1], {"dataset": "something-something-v2",
                                                   "num_classes": 3, "class_names": V2})
    m = evaluate(ckpt, data, out=str(tmp_path / "m.json"))
    assert m["samples"] == 4 and "class_map" not in m
    assert [sum(r) for r in m["confusion_matrix"]] == [1, 2, 1]  # the data's own labels


def test_class_map_file_remaps_the_labels_that_are_scored(tmp_path, capsys):
    from train.classmap import ClassMapError
    from train.cli import main
    from train.loop import evaluate

    ckpt = _checkpoint(tmp_path, 3, V2)
    rev = V2[::-1]  # the same classes in another order
    labels = [0, 0, 0, 1, 2]  # data label 0 = model class 2
    data = _shards(tmp_path / "rev", labels, {"num_classes": 3, "class_names": rev})
    with pytest.raises(ClassMapError, match="2 names different: first index 0"):
        evaluate(ckpt, data, out=str(tmp_path / "m.json"))
    names = tmp_path / "names.json"
    names.write_text(json.dumps(rev))
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(out),
               "--class-map", str(names)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads(out.read_text())
    assert m["samples"] == 5 and m["class_map"] == {"0": 2, "1": 1, "2": 0}
    assert [sum(r) for r in m["confusion_matrix"]] == [1, 1, 3]  # scored on model classes
    assert m["top1"] == pytest.approx(sum(m["confusion_matrix"][c][c] for c in range(3)) / 5)
    # an index map; a data label it does not map is skipped and counted
    idx = tmp_path / "idx.json"
    idx.write_text(json.dumps({"0": 1, "2": 1}))
    m = evaluate(ckpt, data, out=str(out), class_map=str(idx))
    assert m["samples"] == 4 and [sum(r) for r in m["confusion_matrix"]] == [0, 4, 0]
    assert m["skipped"]["reasons"] == {"label_not_in_class_map": 1}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": 3}))
    with pytest.raises(ClassMapError, match="data label 0 maps to class 3, the model has "
                                            "classes 0..2"):
        evaluate(ckpt, data, out=str(out), class_map=str(bad))


# ------------------------------------------------------------------ items 6, 12: export-graphs
@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """12 MultiSyncMNIST videos (32 x 32, 6 frames) and two checkpoints of the same untrained
    4-frame model with other weights (seeds 0 and 1)."""
    from dyreg_pyg.data import write_syncmnist_shards
    from train.checkpoint import save_checkpoint
    from train.config import config_to_dict, load_config
    from train.loop import build_model

    root = tmp_path_factory.mktemp("graphs33")
    write_syncmnist_shards(root / "shards", "train", 12, seed=1, size=32, shard_size=12,
                           frames=6)
    data = str(root / "shards" / "train-000000.tar")
    cfg = load_config("syncmnist_demo", [
        f"data.train={data}", f"data.val={data}", "data.num_frames=4", "data.num_workers=0",
        "model.overrides.num_frames=4", "model.overrides.input_size=32"])
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(cfg, 56)
        path = root / f"seed{seed}.pt"
        save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                         "num_classes": 56}, path)
        ckpts.append(path.read_bytes())
    return {"root": root, "data": data, "ckpts": ckpts}


def _interrupted_export(graphs, tmp_path, monkeypatch) -> tuple:
    """An export of seed 0's ``best.pt`` stopped after its first chunk of 4 graphs."""
    import train.export_graphs as eg
    from train.export_graphs import export_graphs

    best = tmp_path / "best.pt"
    best.write_bytes(graphs["ckpts"][0])
    real, calls = eg.record_region_graphs, {"n": 0}

    def stop_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "export"
    monkeypatch.setattr(eg, "record_region_graphs", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        export_graphs(str(best), graphs["data"], str(out), batch_size=4, chunk=4,
                      progress=False)
    monkeypatch.setattr(eg, "record_region_graphs", real)
    return best, out


def test_export_refuses_to_resume_from_a_replaced_checkpoint(graphs, tmp_path, monkeypatch):
    from dyreg_pyg.export import RegionGraphDataset, file_sha256
    from train.export_graphs import export_graphs

    best, out = _interrupted_export(graphs, tmp_path, monkeypatch)
    meta = json.loads((out / "export.json").read_text())
    assert meta["checkpoint_sha256"] == file_sha256(best) and len(RegionGraphDataset(out)) == 4
    best.write_bytes(graphs["ckpts"][1])  # a running fit replaced best.pt
    with pytest.raises(ValueError) as err:
        export_graphs(str(best), graphs["data"], str(out), batch_size=4, chunk=4,
                      progress=False)
    msg = str(err.value)
    assert f"cannot resume {out}" in msg and "the file was replaced" in msg
    assert meta["checkpoint_sha256"][:12] in msg and "mix the graphs of two models" in msg
    assert len(RegionGraphDataset(out)) == 4  # nothing written
    best.write_bytes(graphs["ckpts"][0])  # the same content again (a new mtime): resumes
    s = export_graphs(str(best), graphs["data"], str(out), batch_size=4, chunk=4,
                      progress=False)
    assert s["videos"] == 12 and s["written"] == 8


def test_a_second_export_into_the_same_folder_is_told_another_is_running(graphs, tmp_path,
                                                                         monkeypatch, capsys):
    import dyreg_pyg.export as ex
    from dyreg_pyg.export import ExportBusyError, RegionGraphDataset, RegionGraphWriter
    from train.cli import main
    from train.export_graphs import export_graphs

    best, out = _interrupted_export(graphs, tmp_path, monkeypatch)
    meta = json.loads((out / "export.json").read_text())
    first = RegionGraphWriter(out, meta)  # a running export holds the folder
    try:
        with pytest.raises(ExportBusyError, match=f"another export is running into {out}"):
            export_graphs(str(best), graphs["data"], str(out), progress=False)
        rc = main(["export-graphs", "--checkpoint", str(best), "--data", graphs["data"],
                   "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and "another export is running into" in err and "Traceback" not in err
    finally:
        first.close()
    # where locks do not work (a network file system): the UNIQUE failure is explained
    monkeypatch.setattr(ex, "_lock_folder", lambda root: None)
    a, b = RegionGraphWriter(out, meta), RegionGraphWriter(out, meta)
    try:
        some = [RegionGraphDataset(out)[i] for i in range(2)]
        a.append(some, {})
        with pytest.raises(ExportBusyError, match="another export is writing into .*graph #4 "
                                                  "was committed by another process"):
            b.append(some, {})
    finally:
        a.close()
        b.close()
    assert len(RegionGraphDataset(out)) == 6  # a's two graphs, nothing of b's


# ------------------------------------------------------------------ item 13: export-model
def _encode(path, frames: np.ndarray):
    from test_predict import _encode as encode  # the suite's one video writer

    return encode(path, frames, "libx264")


def test_export_model_at_the_trained_crop_ships_its_preprocessing(tmp_path, monkeypatch):
    """A model trained at 48 px (the preset says 64) exports a program that takes 48 px
    clips, and run_exported (dyreg_pyg alone) gives predict's probabilities on a video."""
    from PIL import Image

    from dyreg_pyg.inference import load_program, run_exported
    from train.checkpoint import save_checkpoint
    from train.config import config_to_dict, load_config
    from train.loop import build_model
    from train.predict import export_model, predict

    cfg = load_config("syncmnist_demo", ["data.num_frames=4", "data.crop_size=48"])
    assert cfg.model.preset == "syncmnist_r18_dyreg"  # input_size 64
    torch.manual_seed(0)
    model = build_model(cfg, 56)
    assert tuple(model.input_size) == (64, 64)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 56}, ckpt)
    report = export_model(ckpt, tmp_path / "exp")
    assert "program_error" not in report, report
    info = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert info["input_size"] == [48, 48]
    pre = info["preprocessing"]
    assert pre["crop"] == 48 and pre["size"] == [48, 48] and pre["num_frames"] == 4
    assert pre["resize_short_side"] == round(48 * 256 / 224) and pre["in_chans"] == 1
    assert pre["mean"] == cfg.data.mean and pre["std"] == cfg.data.std
    program = load_program(tmp_path / "exp" / "model.pt2")
    clip = torch.randn(3, 4, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(program(clip), model.eval()(clip), atol=1e-4)
    # a video file and the same frames as an array, through the shipped preprocessing
    rng = np.random.default_rng(0)
    frames = np.full((9, 40, 56, 3), 16, np.uint8)
    for i in range(9):
        frames[i, 5 + 2 * i:17 + 2 * i, 4 * i:12 + 4 * i] = rng.integers(120, 255, 3)
    video = _encode(tmp_path / "clip.mp4", frames)
    probs = run_exported(tmp_path / "exp", video, program)
    top = predict(ckpt, [str(video)], top_k=3)["predictions"][0]["top"]
    assert probs.shape == (56,) and probs.topk(3).indices.tolist() == [c for c, _, _ in top]
    assert np.allclose(probs.topk(3).values.tolist(), [p for _, _, p in top], atol=1e-4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):  # lossless: the array's own frames
        Image.fromarray(f).save(folder / f"{i:02d}.png")
    top = predict(ckpt, [str(folder)], top_k=3)["predictions"][0]["top"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "train", None)  # the training package cannot be imported
        probs = run_exported(tmp_path / "exp", frames)  # loads model.pt2 itself
    assert np.allclose(probs.topk(3).values.tolist(), [p for _, _, p in top], atol=1e-4)
    with pytest.raises(ValueError, match=r"expected uint8 frames \[T, H, W\]"):
        run_exported(tmp_path / "exp", frames.astype(np.float32), program)

"""Issue 33 (items 2, 6, 7, 12, 13): results that must not be wrong while looking right -
class maps compared before scoring, exports that cannot mix two checkpoints, ground-truth
boxes drawn on the frames they belong to, and exported models that run at the trained size
with their preprocessing shipped."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from dyreg_pyg.data import ShardWriter, make_clip_loader


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
    loader = make_clip_loader(str(tmp_path / "val-000000.tar"), "val", num_frames=4,
                              batch_size=1, dataset="generic",
                              num_classes=3)
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

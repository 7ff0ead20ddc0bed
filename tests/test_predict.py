"""predict on video files (webm, mp4, frame folders; corrupt files; no manifest), --regions
GIF, and the inference export (torch.export + safetensors, loadable without train/)."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyreg_pyg.data import eval_indices, normalize_clip, write_syncmnist_shards
from dyreg_pyg.inference import load_program, load_weights, pack_videos
from train.checkpoint import save_checkpoint
from train.config import config_to_dict, load_config
from train.loop import build_model, fit
from train.predict import export_model, load_predictor, predict

ROOT = Path(__file__).resolve().parents[1]
T = 4


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """A bright square moving over a dark background, RGB uint8 [n, h, w, 3]."""
    rng = np.random.default_rng(seed)
    out = np.full((n, h, w, 3), 16, np.uint8)
    for i in range(n):
        y, x = (3 + 2 * i) % (h - 10), (5 + 3 * i) % (w - 10)
        out[i, y:y + 10, x:x + 10] = rng.integers(150, 255, 3, dtype=np.uint8)
    return out


def _encode(path: Path, frames: np.ndarray, codec: str) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=12)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def _checkpoint(path: Path, train_pattern: str) -> Path:
    cfg = load_config("syncmnist_demo", [
        f"data.train={train_pattern}", f"data.val={train_pattern}", f"data.num_frames={T}",
        f"model.overrides.num_frames={T}", "model.overrides.input_size=32"])
    torch.manual_seed(0)
    model = build_model(cfg, 56)
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 56}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    write_syncmnist_shards(root / "shards", "train", 4, seed=1, size=32, shard_size=4,
                           frames=6)
    ckpt = _checkpoint(root / "ckpt.pt", f"{root}/shards/train-000000.tar")
    bare = _checkpoint(root / "bare.pt", f"{root}/elsewhere/train-000000.tar")
    webm = _encode(root / "clip one.webm", _frames(9, 32, 48, 0), "libvpx-vp9")
    mp4 = _encode(root / "clip.mp4", _frames(7, 40, 48, 1), "libx264")
    folder = root / "frames"
    folder.mkdir()
    grey = _frames(12, 32, 32, 2)[..., 0]
    for i, f in enumerate(grey):  # png: 10.png sorts after 9.png
        Image.fromarray(f).save(folder / f"{i}.png")
    corrupt = root / "broken.webm"
    corrupt.write_bytes(b"\x1aE\xdf\xa3 this is not a video")
    return {"root": root, "ckpt": ckpt, "bare": bare, "webm": webm, "mp4": mp4,
            "folder": folder, "grey": grey, "corrupt": corrupt}


def test_predict_webm_mp4_and_frame_folder(files):
    r = predict(files["ckpt"], [str(files["webm"]), str(files["mp4"]), str(files["folder"])])
    assert r["skipped"] == [] and r["class_names"]
    assert [p["video"] for p in r["predictions"]] == [
        str(files["webm"]), str(files["mp4"]), str(files["folder"])]
    names = load_predictor(files["ckpt"]).class_names
    for p in r["predictions"]:
        probs = [x[2] for x in p["top"]]
        assert len(p["top"]) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert all(name == names[c] for c, name, _ in p["top"])


def test_predict_samples_as_the_evaluation_does(files):
    """The frame folder (lossless) gives exactly the model's softmax on the segment-centre
    frames, normalised as in training."""
    pred = load_predictor(files["ckpt"])
    idx = eval_indices(len(files["grey"]), T, 1)[0]
    clip = torch.from_numpy(files["grey"][idx]).unsqueeze(1)[None]  # [1, T, 1, H, W]
    with torch.no_grad():
        probs = pred.model(normalize_clip(clip, pred.mean, pred.std)).softmax(-1)[0]
    top = probs.topk(5)
    r = predict(files["ckpt"], [str(files["folder"])])["predictions"][0]
    assert [c for c, _, _ in r["top"]] == top.indices.tolist()
    assert np.allclose([p for _, _, p in r["top"]], top.values.tolist(), atol=1e-5)
    # 2 temporal clips (segment centres and starts), softmax scores averaged
    idx2 = eval_indices(len(files["grey"]), T, 2)
    clips = torch.from_numpy(files["grey"][idx2]).unsqueeze(2)  # [2, T, 1, H, W]
    with torch.no_grad():
        probs2 = pred.model(normalize_clip(clips, pred.mean, pred.std)).softmax(-1).mean(0)
    r2 = predict(files["ckpt"], [str(files["folder"])], num_clips=2)["predictions"][0]
    assert r2["views"] == 2
    assert np.allclose([p for _, _, p in r2["top"]], probs2.topk(5).values.tolist(), atol=1e-5)
    # as in evaluation, 3 crops need a crop size (this model keeps the stored frames)
    with pytest.raises(ValueError, match="3 crops need crop_size"):
        predict(files["ckpt"], [str(files["webm"])], num_crops=3)


def test_regions_gif(files, tmp_path):
    out = tmp_path / "regions.gif"
    r = predict(files["ckpt"], [str(files["webm"])], regions=str(out))
    assert r["predictions"][0]["regions_gif"] == str(out)
    with Image.open(out) as gif:
        assert gif.n_frames == T
    two = predict(files["ckpt"], [str(files["webm"]), str(files["mp4"])],
                  regions=str(tmp_path / "r.gif"))
    gifs = [p["regions_gif"] for p in two["predictions"]]
    assert len(set(gifs)) == 2 and all(Path(g).is_file() for g in gifs)
    with pytest.raises(ValueError, match="unknown DyReg block 'layer9'"):
        predict(files["ckpt"], [str(files["webm"])], regions=str(out), block="layer9")


def test_corrupt_video_alone_is_an_error_naming_it(files):
    with pytest.raises(ValueError, match=r"broken\.webm: corrupt_video"):
        predict(files["ckpt"], [str(files["corrupt"])])


def test_corrupt_video_among_several_is_skipped_and_counted(files):
    r = predict(files["ckpt"], [str(files["webm"]), str(files["corrupt"]), str(files["mp4"])])
    assert len(r["predictions"]) == 2
    assert r["skipped"] == [{"video": str(files["corrupt"]), "reason": "corrupt_video",
                             "detail": r["skipped"][0]["detail"]}]


def test_bad_paths_fail_early(files, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        predict(files["ckpt"], [str(tmp_path / "missing.mp4")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt has extension '\.txt'"):
        pack_videos([tmp_path / "notes.txt"], tmp_path / "shard")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frame image"):
        pack_videos([tmp_path / "empty"], tmp_path / "shard")


def test_a_fifo_is_named_as_such_not_missing(files, tmp_path):
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)  # opening it to read would block: refused before anything is read
    with pytest.raises(ValueError, match=r"clip\.mp4 is a named pipe \(fifo\), not a regular "
                                         r"file; expected a video file or a frame folder"):
        predict(files["ckpt"], [str(files["webm"]), str(fifo)])
    with pytest.raises(ValueError, match=r"--classes: .*names\.fifo is a named pipe \(fifo\)"):
        os.mkfifo(tmp_path / "names.fifo")
        predict(files["ckpt"], [str(files["webm"])], classes=str(tmp_path / "names.fifo"))


def test_huge_jpegs_are_decoded_at_a_bounded_size(files, tmp_path, monkeypatch):
    """8000 x 6000 JPEG frames: libjpeg decodes them at a reduced scale (the full-size
    picture never exists in memory) and they are shrunk to max_side; predict runs on them."""
    from PIL import ImageFile

    folder = tmp_path / "huge"
    folder.mkdir()
    big = Image.new("L", (8000, 6000), 90)  # flat: a few hundred kB as JPEG
    big.paste(200, (1000, 1000, 3000, 2500))
    for i in range(2):
        big.save(folder / f"{i}.jpg", quality=50)
    del big
    decoded = []
    load = ImageFile.ImageFile.load

    def spy(self):  # the size each picture is actually decoded at
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    shard, _ = pack_videos([folder], tmp_path / "shard", max_side=1024)
    assert decoded and max(max(s) for s in decoded) <= 2000, decoded  # 1/4 scale, not 8000
    import tarfile

    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith("frames.npy"))
        frames = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    assert frames.shape == (2, 768, 1024, 3)  # aspect kept
    assert frames[0, 0, 0].tolist() == [90] * 3 and frames[0, 200, 200].tolist() == [200] * 3
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    r = predict(files["ckpt"], [str(folder)], max_side=1024)
    assert len(r["predictions"]) == 1 and r["skipped"] == []


def test_small_jpeg_frames_are_stored_as_they_are(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    for i, f in enumerate(_frames(3, 32, 48, 0)):
        Image.fromarray(f).save(folder / f"{i}.jpg")
    shard, _ = pack_videos([folder], tmp_path / "shard")
    import tarfile

    with tarfile.open(shard) as tar:
        names = sorted(m.name.split(".", 1)[1] for m in tar)
    assert names == ["000000.jpg", "000001.jpg", "000002.jpg"]


def test_checkpoint_without_manifest_shows_indices_and_warns(files, caplog, tmp_path):
    with caplog.at_level("WARNING", logger="train"):
        r = predict(files["bare"], [str(files["webm"])])
    assert "no class names" in caplog.text and "--classes" in caplog.text
    assert not r["class_names"]
    assert all(name == str(c) for c, name, _ in r["predictions"][0]["top"])
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(56)))
    r = predict(files["bare"], [str(files["webm"])], classes=str(names))
    assert all(name == f"class {c}" for c, name, _ in r["predictions"][0]["top"])
    names.write_text("a\nb\n")
    with pytest.raises(ValueError, match="lists 2 class names, the model has 56"):
        predict(files["bare"], [str(files["webm"])], classes=str(names))


def test_fit_saves_the_class_names_so_predict_names_classes_without_the_shards(files,
                                                                               tmp_path):
    """A checkpoint carries the training manifest's ``class_names`` (a list of str, loadable
    with ``weights_only=True``): predict names the classes after the shards are gone."""
    shards = tmp_path / "shards"
    shutil.copytree(files["root"] / "shards", shards)
    manifest = json.loads((shards / "train-manifest.json").read_text())
    cfg = load_config("syncmnist_demo", [
        f"data.train={shards}/train-000000.tar", "data.val=", f"out_dir={tmp_path / 'run'}",
        f"data.num_frames={T}", "data.batch_size=2", "data.num_workers=0", "data.epoch_size=4",
        "epochs=1", "max_steps=1", f"model.overrides.num_frames={T}",
        "model.overrides.input_size=32", "threads=1"])
    fit(cfg)
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert len(manifest["class_names"]) == 56
    assert ck["class_names"] == manifest["class_names"]
    shards.rename(tmp_path / "moved")  # no manifest next to the run's shards any more
    r = predict(tmp_path / "run" / "last.pt", [str(files["webm"])])
    assert r["class_names"]
    assert all(name == manifest["class_names"][c] for c, name, _ in r["predictions"][0]["top"])


@pytest.mark.slow  # a subprocess
def test_cli_predict_output_and_exit_codes(files):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "train", "predict", "--checkpoint", str(files["ckpt"])]
    r = subprocess.run(cmd + [str(files["webm"]), str(files["corrupt"])], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr  # 2: some videos skipped
    lines = r.stdout.splitlines()
    start = lines.index(f"{files['webm']}:")
    assert [line[:5] for line in lines[start + 1:start + 6]] == [
        f"  {k}. " for k in range(1, 6)]
    assert f"skipped 1 of 2 videos: {files['corrupt']} (corrupt_video)" in r.stderr
    r = subprocess.run(cmd + [str(files["corrupt"])], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1
    assert "error: predict: no video could be used:" in r.stderr and "broken.webm" in r.stderr


def test_predict_writes_json_and_csv_for_scripts(files, capsys):
    import csv
    import io

    from train.cli import main

    args = ["predict", "--checkpoint", str(files["ckpt"]), str(files["webm"]),
            str(files["corrupt"]), "--top-k", "3"]
    assert main([*args, "--json"]) == 2             # 2: one video skipped, as in text mode
    out, err = capsys.readouterr()
    doc = json.loads(out)                           # stdout is one JSON document, nothing else
    (p,) = doc["predictions"]
    assert p["video"] == str(files["webm"]) and [t["rank"] for t in p["top"]] == [1, 2, 3]
    probs = [t["probability"] for t in p["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert doc["skipped"][0]["reason"] == "corrupt_video" and "skipped 1 of 2" in err
    assert main([*args, "--format", "csv"]) == 2
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["rank"], r["name"]) for r in rows] == [(str(t["rank"]), t["name"])
                                                      for t in p["top"]]
    assert np.allclose([float(r["probability"]) for r in rows], probs, atol=1e-6)


def test_export_model_torch_export_and_safetensors(files, tmp_path):
    report = export_model(files["ckpt"], tmp_path / "exp")
    assert "program_error" not in report
    pred = load_predictor(files["ckpt"])
    clip = torch.randn(3, T, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = pred.model(clip)
        program = load_program(tmp_path / "exp" / "model.pt2")(clip)
        model, info = load_weights(tmp_path / "exp" / "model.safetensors")
        reloaded = model(clip)
    assert torch.allclose(program, eager, atol=1e-5)  # batch 3: the batch size is dynamic
    assert torch.equal(reloaded, eager)
    assert info["class_names"] == pred.class_names and info["num_frames"] == T
    # predict from the safetensors file alone gives the checkpoint's prediction
    a = predict(files["ckpt"], [str(files["folder"])])["predictions"][0]["top"]
    b = predict(tmp_path / "exp" / "model.safetensors",
                [str(files["folder"])])["predictions"][0]["top"]
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert np.allclose([x[2] for x in a], [x[2] for x in b], atol=1e-6)


@pytest.mark.slow  # a subprocess
def test_exported_weights_load_without_the_training_code(files, tmp_path):
    export_model(files["ckpt"], tmp_path / "exp", program=False)
    assert not (tmp_path / "exp" / "model.pt2").exists()
    code = (
        "import sys; sys.modules['train'] = None\n"  # the training package cannot be imported
        "import torch\n"
        "from dyreg_pyg.inference import load_weights\n"
        f"m, info = load_weights({str(tmp_path / 'exp' / 'model.safetensors')!r})\n"
        "x = torch.zeros(2, info['num_frames'], info['in_chans'], *info['input_size'])\n"
        "print(tuple(m(x).shape), info['preset'], len(info['class_names']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(2,", "56)", "syncmnist_r18_dyreg", "56"]


def test_garbage_or_truncated_weights_are_a_clear_error(files, tmp_path):
    from dyreg_pyg.inference import load_weights

    export_model(files["ckpt"], tmp_path / "exp", program=False)
    good = (tmp_path / "exp" / "model.safetensors").read_bytes()
    for name, data in [("empty", b""), ("garbage", b"not a safetensors file" * 8),
                       ("truncated", good[: len(good) // 2])]:
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_weights(bad)


def test_missing_safetensors_is_a_clear_error(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="safetensors is not installed: pip install"):
        export_model(files["ckpt"], tmp_path / "exp", program=False)


def test_export_model_falls_back_to_weights_when_torch_export_fails(files, tmp_path,
                                                                     monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 > 0\nmore lines")

    monkeypatch.setattr(torch.export, "export", refuse)
    report = export_model(files["ckpt"], tmp_path / "exp")
    assert report["program_error"] == (
        "torch.export could not trace VideoModel: RuntimeError: Could not guard on "
        "data-dependent expression u0 > 0")
    assert not (tmp_path / "exp" / "model.pt2").exists()
    assert (tmp_path / "exp" / "model.safetensors").is_file()


def test_export_error_names_where_the_model_code_broke(files, monkeypatch):
    import dyreg_pyg.module
    from dyreg_pyg.inference import ExportError, export_program

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(dyreg_pyg.module, "pool_nodes", broken)  # Eq. 7, in DyRegGNN
    model = load_predictor(files["ckpt"]).model
    with pytest.raises(ExportError, match=r"RuntimeError: unsupported operation \(at "
                                          r"module\.py:\d+ in \w+\)"):
        export_program(model, torch.zeros(2, T, 1, 32, 32))

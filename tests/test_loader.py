"""Streaming clip loader: exact-once evaluation over nodes x workers, clip shapes, sampling,
flip label swap, corrupt samples skipped and counted, transforms."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from dyreg_pyg.data import (
    ClipLoaderConfig,
    ShardWriter,
    eval_indices,
    make_clip_loader,
    normalize_clip,
    train_indices,
    write_syncmnist_shards,
)


@pytest.fixture(scope="module")
def smnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("smnist")
    val = write_syncmnist_shards(root, "val", 46, seed=3, shard_size=8)  # 6 shards
    train = write_syncmnist_shards(root, "train", 24, seed=1, shard_size=12)
    return root, train, val


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _rgb_sample(label: int, frames: int = 6, h: int = 40, w: int = 60) -> dict[str, bytes]:
    members = {"cls": str(label).encode(),
               "json": json.dumps({"orig_label": label, "frame_size": [w, h]}).encode()}
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = np.linspace(240, 0, w).astype(np.uint8)[None, :, None]  # bright left
        img[0, 0] = i
        members[f"{i:05d}.jpg"] = _jpeg(img)
    return members


def _keys(loader):
    out = []
    for b in loader:
        out += b["key"]
    return out


@pytest.mark.parametrize("shards", ["many", "few"])
def test_validation_exactly_once_over_2_nodes_x_2_workers(smnist, shards):
    root, _, val = smnist
    pattern = val["pattern"] if shards == "many" else str(root / "val-{000000..000001}.tar")
    expected = 46 if shards == "many" else 16
    seen = []
    for rank in range(2):
        loader = make_clip_loader(pattern, "val", ClipLoaderConfig(
            num_frames=10, batch_size=4, num_workers=2, rank=rank, world_size=2))
        keys = _keys(loader)
        assert keys, "every rank gets work"
        seen += keys
    assert len(seen) == expected and len(set(seen)) == expected


def test_training_clip_shapes_dtypes_epoch_length_and_determinism(smnist):
    root, train, _ = smnist

    def run(seed):
        loader = make_clip_loader(train["pattern"], "train", ClipLoaderConfig(
            num_frames=4, batch_size=5, crop_size=48, epoch_size=20, seed=seed, shuffle_buffer=10))
        assert len(loader) == 4
        return list(loader)

    batches = run(0)
    assert len(batches) == 4
    b = batches[0]
    assert b["video"].shape == (5, 4, 1, 48, 48) and b["video"].dtype == torch.uint8
    assert b["label"].dtype == torch.int64 and b["label"].shape == (5,)
    assert len(b["key"]) == 5 and len(b["meta"]) == 5
    idx = b["meta"][0]["frame_indices"]
    assert len(idx) == 4 and all(2 * 10 // 8 * k <= i for k, i in enumerate(idx[:1]))
    again = run(0)
    assert [x["key"] for x in again] == [x["key"] for x in batches]
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(again, batches))
    other = run(1)
    assert [x["key"] for x in other] != [x["key"] for x in batches]
    # no crop: stored 64 x 64 frames; labels agree with the stored ones
    loader = make_clip_loader(train["pattern"], "train", ClipLoaderConfig(
        num_frames=10, batch_size=3, epoch_size=6, shuffle_buffer=0))
    for b in loader:
        assert b["video"].shape == (3, 10, 1, 64, 64)
        for m, y in zip(b["meta"], b["label"].tolist()):
            assert m["label"] == y and m["frame_indices"] == list(range(10))


def test_evaluation_views(smnist):
    _, _, val = smnist
    loader = make_clip_loader(val["pattern"], "val", ClipLoaderConfig(
        num_frames=5, batch_size=4, crop_size=56, num_clips=2, num_crops=3))
    b = next(iter(loader))
    assert b["video"].shape == (4, 6, 5, 1, 56, 56)
    m = b["meta"][0]
    assert m["frame_indices"] == [1, 3, 5, 7, 9]  # segment centres
    assert m["clip_frame_indices"][1] == [0, 2, 4, 6, 8]
    assert m["frame_size"] == [56, 56] and np.asarray(m["boxes"]).shape == (10, 5, 4)


def test_flip_swaps_left_right_labels(tmp_path):
    with ShardWriter(tmp_path, "train", maxcount=100) as w:
        for i in range(12):
            w.write(f"v{i:03d}", _rgb_sample(label=i % 3))
    loader = make_clip_loader(str(tmp_path / "train-000000.tar"), "train", ClipLoaderConfig(
        num_frames=3, batch_size=4, crop_size=32, dataset="something", flip=True,
        flip_pairs={0: 1, 1: 0}, epoch_size=24, shuffle_buffer=4, seed=2))
    flipped = kept = 0
    for _ in range(2):
        for b in loader:
            assert b["video"].shape == (4, 3, 3, 32, 32)
            for v, y, m in zip(b["video"], b["label"].tolist(), b["meta"]):
                left = v[..., :, :8].float().mean()
                right = v[..., :, -8:].float().mean()
                orig = m["orig_label"]
                if m["flipped"]:
                    flipped += 1
                    assert left < right  # the bright side moved right
                    assert y == {0: 1, 1: 0, 2: 2}[orig]
                else:
                    kept += 1
                    assert left > right and y == orig
    assert flipped and kept


def test_corrupt_members_are_skipped_and_counted(tmp_path, caplog):
    good = _rgb_sample(1)
    with ShardWriter(tmp_path, "val", maxcount=100) as w:
        w.write("ok0", good)
        bad = dict(good)
        bad["00003.jpg"] = good["00003.jpg"][:200]  # truncated JPEG (a sampled frame)
        w.write("badjpeg", bad)
        w.write("ok1", good)
        w.write("nocls", {k: v for k, v in good.items() if k != "cls"})
        w.write("badlabel", {**good, "cls": b"999"})
        w.write("badjson", {**good, "json": b"{not json"})
        w.write("ok2", good)
        w.write("badnpy", {"cls": b"1", "frames.npy": b"\x93NUMPY garbage"})
        w.write("ok3", good)
    url = str(tmp_path / "val-000000.tar")
    with caplog.at_level("WARNING"):
        loader = make_clip_loader(url, "val", ClipLoaderConfig(
            num_frames=3, batch_size=2, crop_size=32, dataset="something", num_classes=10))
        keys = _keys(loader)
    assert keys == ["ok0", "ok1", "ok2", "ok3"]
    assert loader.skips.count == 5 and loader.epoch_skips.count == 5
    assert dict(loader.skips.reasons) == {"corrupt_jpeg": 1, "missing_cls": 1,
                                          "label_not_in_class_map": 1, "bad_json": 1,
                                          "corrupt_npy": 1}
    assert {k for k, _, _ in loader.skips.examples} == {"badjpeg", "nocls", "badlabel",
                                                        "badjson", "badnpy"}
    assert "5 samples skipped" in caplog.text and "badjpeg" in caplog.text
    # same with two workers: the counts travel from the workers to the loader
    loader = make_clip_loader(url, "val", ClipLoaderConfig(num_frames=3, batch_size=2, crop_size=32,
                              dataset="something", num_classes=10, num_workers=2))
    assert sorted(_keys(loader)) == ["ok0", "ok1", "ok2", "ok3"]
    assert loader.skips.count == 5


def test_truncated_shard_reports_and_continues(smnist, tmp_path):
    root, _, val = smnist
    data = (root / "val-000000.tar").read_bytes()
    (tmp_path / "val-000000.tar").write_bytes(data[: len(data) // 2 + 100])
    (tmp_path / "val-000001.tar").write_bytes((root / "val-000001.tar").read_bytes())
    loader = make_clip_loader(str(tmp_path / "val-{000000..000001}.tar"), "val", ClipLoaderConfig(
        num_frames=10, batch_size=4, num_classes=56))
    keys = _keys(loader)
    assert 8 <= len(keys) < 16  # the intact shard + what was readable of the truncated one
    assert loader.skips.count >= 1


def test_bad_urls_and_arguments(tmp_path, smnist):
    _, train, _ = smnist
    cfg = ClipLoaderConfig(num_frames=10, batch_size=2)
    with pytest.raises(ValueError, match="urls"):
        make_clip_loader([], "val", cfg)
    with pytest.raises(ValueError, match="urls"):
        make_clip_loader(str(tmp_path / "nothing-{000000..000003}.tar"), "val", cfg)
    with pytest.raises(ValueError, match="urls"):
        make_clip_loader(str(tmp_path), "val", cfg)  # a folder without shards
    with pytest.raises(ValueError, match="split"):
        make_clip_loader(train["pattern"], "dev", cfg)
    with pytest.raises(ValueError, match="num_crops: expected 1 or 3, got 2"):
        ClipLoaderConfig(num_frames=10, batch_size=2, crop_size=32, num_crops=2)
    with pytest.raises(ValueError, match="num_crops: 3 crops need crop_size"):
        make_clip_loader(train["pattern"], "val", replace(cfg, num_crops=3))
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        replace(cfg, batch_size=0)


def test_the_settings_come_as_one_config(smnist):
    """The former keywords are the config's fields; the old call forms fail saying so."""
    _, train, _ = smnist
    old = dict(num_frames=4, batch_size=2, epoch_size=6, scales=[1.0, 0.875], seed=3)
    cfg = ClipLoaderConfig(**old)
    assert cfg.scales == (1.0, 0.875) and cfg.num_workers == 0 and cfg.dataset == "syncmnist"
    loader = make_clip_loader(train["pattern"], "train", cfg)
    assert len(loader) == 3 and loader.dataset.p.scales == (1.0, 0.875)
    with pytest.raises(TypeError, match="config: expected a ClipLoaderConfig .* got int"):
        make_clip_loader(train["pattern"], "train", 4)
    with pytest.raises(TypeError, match=r"config: expected a ClipLoaderConfig .* got keywords "
                                        r"\['batch_size', 'epoch_size', 'num_frames'"):
        make_clip_loader(train["pattern"], "train", **old)


def test_frame_sampling():
    rng = np.random.default_rng(0)
    for n, t in ((40, 8), (8, 8), (9, 4), (3, 8)):
        for _ in range(20):
            idx = train_indices(n, t, rng)
            assert idx.shape == (t,) and idx.min() >= 0 and idx.max() < n
            assert np.all(np.diff(idx) >= 0)
            if n >= t:  # one frame in each of t equal segments
                k = np.arange(t)
                assert np.all(k * n // t <= idx) and np.all(idx < (k + 1) * n // t)
    np.testing.assert_array_equal(eval_indices(40, 8)[0], np.arange(8) * 5 + 2)
    np.testing.assert_array_equal(eval_indices(40, 8, 2)[1], np.arange(8) * 5)
    with pytest.raises(ValueError, match="num_frames"):
        train_indices(0, 8, rng)


def test_normalize_clip():
    v = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = normalize_clip(v, mean, std)
    ref = (v.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    g = normalize_clip(v[:, :, :1], [0.5], [0.5])
    assert torch.allclose(g, v[:, :, :1].float() / 127.5 - 1, atol=1e-5)
    with pytest.raises(ValueError, match="mean"):
        normalize_clip(v, [0.5, 0.5], [0.5])

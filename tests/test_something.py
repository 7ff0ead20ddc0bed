"""Something-Something V1 / V2 converters on tiny release-format data made here."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyreg_pyg.data import (
    ClipLoaderConfig,
    convert_something,
    flip_pairs_from_names,
    make_clip_loader,
    template_to_class_name,
)

ROOT = Path(__file__).resolve().parents[1]

CLASSES = [
    "Pushing something from left to right",
    "Pushing something from right to left",
    "Putting something on something",
    "Turning the camera left while filming something",
    "Turning the camera right while filming something",
]
TEMPLATES = [
    "Pushing [something] from left to right",
    "Pushing [something] from right to left",
    "Putting [something] on [something]",
    "Turning the camera left while filming [something]",
    "Turning the camera right while filming [something]",
]


def _webm(path: Path, frames: int, w: int = 48, h: int = 32) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=12)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.full((h, w, 3), 20 * i, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    vids = root / "videos"
    vids.mkdir()
    labels = {name: str(i) for i, name in enumerate(CLASSES)}
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels))
    entries = []
    for k in range(8):
        vid = str(1000 + k)
        c = k % len(CLASSES)
        _webm(vids / f"{vid}.webm", frames=6 + k)
        entries.append({"id": vid, "label": TEMPLATES[c].replace("[something]", "a cup"),
                        "template": TEMPLATES[c], "placeholders": ["a cup"]})
    (vids / "2000.webm").write_bytes(b"\x1aE\xdf\xa3 this is not a video")
    entries.append({"id": "2000", "label": "x", "template": TEMPLATES[0], "placeholders": []})
    entries.append({"id": "2001", "label": "x", "template": "Juggling [something]",
                    "placeholders": []})
    entries.append({"id": "2002", "label": "x", "template": TEMPLATES[2], "placeholders": []})
    (root / "something-something-v2-train.json").write_text(json.dumps(entries[:6]))
    (root / "something-something-v2-validation.json").write_text(json.dumps(entries[6:]))
    (root / "something-something-v2-test.json").write_text(json.dumps([{"id": "1000"}]))
    boxes = {"1001": [{"name": "1001/0002.jpg", "labels": [
        {"box2d": {"x1": 4, "y1": 2, "x2": 20, "y2": 16}, "category": "cup",
         "standard_category": "0000"}]}]}
    (root / "bounding_box_annotations.json").write_text(json.dumps(boxes))
    return root


def _members(folder: Path, split: str) -> dict[str, bytes]:
    out = {}
    for p in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(p) as t:
            out.update({m.name: t.extractfile(m).read() for m in t.getmembers()})
    return out


def test_template_matching_and_flip_pairs():
    assert template_to_class_name(TEMPLATES[2]) == CLASSES[2]
    pairs = flip_pairs_from_names({n: i for i, n in enumerate(CLASSES)})
    assert pairs == {0: 1, 1: 0, 3: 4, 4: 3}


@pytest.mark.parametrize("store", ["video", "frames"])
def test_ssv2_convert_and_read_back(ssv2, tmp_path, store):
    out = tmp_path / store
    m = convert_something(2, ssv2, out, "train", videos=ssv2 / "videos", store=store,
                          maxcount=4, boxes=[ssv2 / "bounding_box_annotations.json"])
    assert m["num_samples"] == 6 and [s["count"] for s in m["shards"]] == [4, 2]
    assert m["num_classes"] == 5 and m["class_names"] == CLASSES
    assert m["flip_pairs"] == {"0": 1, "1": 0, "3": 4, "4": 3}
    members = _members(out, "train")
    for k in range(6):
        vid = str(1000 + k)
        assert int(members[f"{vid}.cls"]) == k % 5
        meta = json.loads(members[f"{vid}.json"])
        assert meta["id"] == vid and meta["num_frames"] == 6 + k
        assert meta["template"] == TEMPLATES[k % 5] and meta["placeholders"] == ["a cup"]
        assert meta["class_name"] == CLASSES[k % 5] and meta["fps"] == pytest.approx(12)
        if store == "video":
            assert f"{vid}.webm" in members
        else:
            assert sum(n.startswith(f"{vid}.") and n.endswith(".jpg") for n in members) == 6 + k
    meta = json.loads(members["1001.json"])
    assert meta["boxes"][1] == [[4.0, 2.0, 20.0, 16.0]] and meta["boxes"][0] == []
    # read back through the loader: ids, labels and frame counts survive
    loader = make_clip_loader(m["pattern"], "validation", ClipLoaderConfig(
        num_frames=4, batch_size=3, crop_size=32, dataset="something"))
    got = {}
    for b in loader:
        assert b["video"].shape[1:] == (4, 3, 32, 32)
        for key, y, meta in zip(b["key"], b["label"].tolist(), b["meta"]):
            got[key] = (y, meta["num_frames"], meta["frame_indices"])
    assert loader.skips.count == 0
    assert {k: v[0] for k, v in got.items()} == {str(1000 + k): k % 5 for k in range(6)}
    assert got["1005"][1] == 11 and got["1005"][2] == [1, 4, 6, 9]


def test_ssv2_skips_are_counted(ssv2, tmp_path):
    m = convert_something(2, ssv2, tmp_path, "validation", videos=ssv2 / "videos")
    assert m["num_samples"] == 2  # 1006, 1007
    sk = m["skipped"]
    assert sk["count"] == 3
    assert sk["reasons"] == {"corrupt_video": 1, "label_not_in_class_map": 1,
                             "missing_video": 1}
    assert {i for i, _ in sk["items"]} == {"2000", "2001", "2002"}
    test = convert_something(2, ssv2, tmp_path / "t", "test", videos=ssv2 / "videos")
    assert test["num_samples"] == 1 and "1000.cls" not in _members(tmp_path / "t", "test")
    loader = make_clip_loader(test["pattern"], "test", ClipLoaderConfig(
        num_frames=2, batch_size=1, crop_size=16, dataset="something"))
    assert next(iter(loader))["label"].tolist() == [-1]


def test_ssv1_convert_cli_and_read_back(tmp_path):
    ann, frames = tmp_path / "ann", tmp_path / "frames"
    ann.mkdir()
    (ann / "something-something-v1-labels.csv").write_text("\n".join(CLASSES) + "\n")
    rows = []
    for k in range(7):
        vid = str(500 + k)
        (frames / vid).mkdir(parents=True)
        for i in range(5 + k):
            Image.fromarray(np.full((100, 132, 3), 10 * i, np.uint8)).save(
                frames / vid / f"{i + 1:05d}.jpg", quality=90)
        rows.append(f"{vid};{CLASSES[k % 5]}")
    (frames / "599").mkdir()
    (frames / "599" / "00001.jpg").write_bytes(b"not a jpeg")
    rows.append("599;" + CLASSES[0])
    (ann / "something-something-v1-train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "datasets" / "something_something.py"),
                           "--version", "1", "--annotations", str(ann), "--videos",
                           str(frames), "--out", str(out), "--split", "train",
                           "--maxcount", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "train-manifest.json").read_text())
    assert m["num_samples"] == 7 and m["store"] == "frames" and m["num_classes"] == 5
    assert m["skipped"]["reasons"] == {"corrupt_jpeg": 1}
    members = _members(out, "train")
    for k in range(7):
        vid = str(500 + k)
        meta = json.loads(members[f"{vid}.json"])
        assert int(members[f"{vid}.cls"]) == k % 5 and meta["num_frames"] == 5 + k
        assert meta["fps"] == 12.0 and meta["frame_size"] == [132, 100]
        # frames already small: the original JPEG bytes are kept
        assert members[f"{vid}.00000.jpg"] == (frames / vid / "00001.jpg").read_bytes()
    loader = make_clip_loader(m["pattern"], "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, crop_size=32, dataset="something", epoch_size=6, seed=0))
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["video"].shape == (2, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="store"):
        convert_something(1, ann, out, "train", videos=frames, store="video")
    with pytest.raises(ValueError, match="annotations"):
        convert_something(1, ann, out, "validation", videos=frames)

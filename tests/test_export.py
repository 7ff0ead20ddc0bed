"""export-graphs: the region graphs of a trained model as a PyG OnDiskDataset (streamed,
skips counted, resumable), and a PyG graph classifier trained on them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_geometric.transforms as transforms

from dyreg_pyg.data import ClipLoaderConfig, make_clip_loader, write_syncmnist_shards
from dyreg_pyg.data.shards import ShardWriter
from dyreg_pyg.export import EXPORT_FORMAT_V1, RegionGraphDataset
from dyreg_pyg.geometry import edge_attr, self_loop_edge_attr
from dyreg_pyg.graph import SPATIAL, TEMPORAL, RegionGeometry, to_hetero, with_geometry
from train.checkpoint import save_checkpoint
from train.config import config_to_dict, load_config
from train.data import normalise
from train.export_graphs import export_graphs
from train.loop import build_model, load_trained

ROOT = Path(__file__).resolve().parents[1]
T = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """24 MultiSyncMNIST videos (32 x 32, 6 frames) in 3 shards, and the checkpoint of an
    (untrained) 4-frame model as fit writes it."""
    root = tmp_path_factory.mktemp("graphs")
    shards = root / "shards"
    write_syncmnist_shards(shards, "train", 24, seed=1, size=32, shard_size=8, frames=6)
    data = f"{shards}/train-{{000000..000002}}.tar"
    cfg = load_config("syncmnist_demo", [
        f"data.train={data}", f"data.val={data}", f"data.num_frames={T}", "data.num_workers=0",
        f"model.overrides.num_frames={T}", "model.overrides.input_size=32"])
    torch.manual_seed(0)
    model = build_model(cfg, 56)
    ckpt = root / "ckpt.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg),
                     "num_classes": 56}, ckpt)
    out = root / "export"
    summary = export_graphs(str(ckpt), data, str(out), batch_size=5, chunk=8, progress=False)
    return {"root": root, "data": data, "ckpt": ckpt, "out": out, "summary": summary,
            "shards": shards}


def test_export_writes_one_graph_per_video(setup):
    s = setup["summary"]
    assert s["videos"] == 24 and s["written"] == 24 and s["skipped"] == 0
    assert s["block"] == "layer2"
    ds = RegionGraphDataset(setup["out"])
    assert len(ds) == 24 and ds.num_classes == 56
    meta = json.loads((setup["out"] / "export.json").read_text())
    assert meta["class_names"][0] and meta["node_channels"] == 64 and meta["num_nodes"] == 9
    assert json.loads((setup["out"] / "progress.json").read_text())["complete"] is True
    g = ds[0]
    n = 9
    assert g.x.shape == (T * n, 64) and g.region.shape == g.box.shape == (T * n, 4)
    assert g.frame.tolist() == [t for t in range(T) for _ in range(n)]
    assert g.region_id.tolist() == list(range(n)) * T
    assert g.y.shape == (1,) and isinstance(g.video_id, str)
    spatial = g.edge_index[:, g.edge_type == SPATIAL]
    temporal = g.edge_index[:, g.edge_type == TEMPORAL]
    assert spatial.shape[1] == T * n * n  # complete frame graphs with self-loops
    assert bool((g.frame[spatial[0]] == g.frame[spatial[1]]).all())
    assert temporal.shape[1] == (T - 1) * n
    assert bool((g.frame[temporal[1]] == g.frame[temporal[0]] + 1).all())
    assert bool((g.region_id[temporal[1]] == g.region_id[temporal[0]]).all())
    assert float(g.box.min()) >= 0 and float(g.box.max()) <= 1
    # boxes are the regions' supports (cx +- w, cy +- h), clipped
    expect = torch.cat([g.region[:, :2] - g.region[:, 2:], g.region[:, :2] + g.region[:, 2:]], 1)
    assert torch.allclose(g.box, expect.clamp(0, 1))
    ids = [ds[i].video_id for i in range(len(ds))]
    assert len(set(ids)) == 24
    # PyG-conventional geometry: pos = the centres, edge_attr = kind one-hot + geometry
    assert meta["edge_attr_columns"] == list(ds.edge_attr_columns) == [
        "spatial", "temporal", "dx", "dy", "distance", "log_w", "log_h", "iou"]
    assert torch.equal(g.pos, g.region[:, :2])
    assert g.edge_attr.shape == (g.edge_index.shape[1], 8)
    assert torch.equal(g.edge_attr[:, 1].long(), g.edge_type)  # edge_type kept, the same kind
    torch.testing.assert_close(g.edge_attr, edge_attr(g.region, g.edge_index, g.frame))


def test_graph_nodes_are_the_block_node_states(setup):
    """x is DyRegGNN.node_states of the block's input, labels are the shards' labels."""
    model, cfg, _ = load_trained(setup["ckpt"], setup["data"])
    model.eval()
    blk = model.dyreg_blocks()["layer2"]
    seen = {}
    handle = blk.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    loader = make_clip_loader(setup["data"], "val",
                              ClipLoaderConfig(num_frames=T, batch_size=3, rank=0, world_size=1))
    batch = next(iter(loader))
    with torch.no_grad():
        model(normalise(batch["video"], cfg))
        nodes = blk.gnn.node_states(seen["x"])
    handle.remove()
    ds = RegionGraphDataset(setup["out"])
    for i in range(3):
        g = ds[i]
        assert g.video_id == batch["key"][i] and int(g.y) == int(batch["label"][i])
        assert torch.allclose(g.x, nodes[i].reshape(-1, 64), atol=1e-5)


def test_gatv2_classifier_learns_on_exported_graphs(setup):
    """The README example: GATv2Conv + global_mean_pool on the exported graphs with PyG's
    DataLoader. The nodes come from an untrained model, so the graphs differ little; the
    classifier still fits them well beyond the label prior (22 labels among 24 videos)."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import GATv2Conv, global_mean_pool

    class GraphClassifier(torch.nn.Module):
        def __init__(self, channels: int, classes: int, hidden: int = 32) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(channels)
            self.conv1 = GATv2Conv(channels, hidden, heads=2, edge_dim=8)
            self.conv2 = GATv2Conv(2 * hidden, hidden, edge_dim=8)
            self.head = torch.nn.Linear(hidden, classes)

        def forward(self, data):
            e = data.edge_attr  # edge kind one-hot + region geometry
            x = self.conv1(self.norm(data.x), data.edge_index, e).relu()
            x = self.conv2(x, data.edge_index, e).relu()
            return self.head(global_mean_pool(x, data.batch))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small graphs: threads only contend
    try:
        torch.manual_seed(0)
        ds = RegionGraphDataset(setup["out"])
        loader = DataLoader(ds, batch_size=24, shuffle=True)
        net = GraphClassifier(ds.num_node_features, ds.num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses, correct = [], 0
        for _ in range(80):
            total, correct = 0.0, 0
            for batch in loader:
                logits = net(batch)
                loss = F.cross_entropy(logits, batch.y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * batch.num_graphs
                correct += int((logits.argmax(-1) == batch.y).sum())
            losses.append(total / len(ds))
    finally:
        torch.set_num_threads(threads)
    assert batch.y.shape == (batch.num_graphs,)
    labels = torch.tensor([int(ds[i].y) for i in range(len(ds))])
    prior = -(labels.bincount().float()[labels.unique()] / 24).log().mul(
        labels.bincount().float()[labels.unique()] / 24).sum()
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < float(prior) - 1.0, losses
    assert correct >= 16  # of 24 (the most frequent label: 2)


def test_interrupted_export_resumes_to_the_same_graphs(setup, tmp_path, monkeypatch):
    import train.export_graphs as eg

    real = eg.record_region_graphs
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(eg, "record_region_graphs", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        export_graphs(str(setup["ckpt"]), setup["data"], str(out), batch_size=4, chunk=4,
                      progress=False)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["videos"] == 8 and progress["complete"] is False
    assert len(RegionGraphDataset(out)) == 8  # the committed chunks are readable
    monkeypatch.setattr(eg, "record_region_graphs", real)
    s = export_graphs(str(setup["ckpt"]), setup["data"], str(out), batch_size=4, chunk=4,
                      progress=False)
    assert s["videos"] == 24 and s["written"] == 16
    a, b = RegionGraphDataset(out), RegionGraphDataset(setup["out"])
    for i in range(24):
        assert a[i].video_id == b[i].video_id
        assert torch.allclose(a[i].x, b[i].x, atol=1e-5)
    # complete: a third run does nothing
    assert export_graphs(str(setup["ckpt"]), setup["data"], str(out), progress=False)[
        "written"] == 0
    # another block / data in the same folder is refused
    with pytest.raises(ValueError, match="already holds an export of other settings"):
        export_graphs(str(setup["ckpt"]), f"{setup['shards']}/train-000000.tar", str(out),
                      progress=False)


def test_progress_without_tqdm_is_logged(setup, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with caplog.at_level("INFO", logger="train"):
        export_graphs(str(setup["ckpt"]), setup["data"], str(tmp_path / "out"), batch_size=8)
    # the total is the manifest's sample count; a line every tenth of it
    assert "export-graphs: 8/24 videos, 0 skipped" in caplog.text
    assert "export-graphs: 24/24 videos, 0 skipped" in caplog.text


def test_corrupt_videos_are_skipped_and_counted(setup, tmp_path):
    bad = tmp_path / "bad"
    with ShardWriter(bad, "train") as w:
        w.write("bad_npy", {"cls": b"3", "frames.npy": b"not an array"})
        w.write("no_label", {"frames.npy": _npy(np.zeros((6, 32, 32), np.uint8))})
    data = f"{setup['shards']}/train-000000.tar::{bad}/train-000000.tar"
    s = export_graphs(str(setup["ckpt"]), data, str(tmp_path / "out"), progress=False)
    assert s["videos"] == 8 and s["skipped"] == 2
    assert s["skip_reasons"] == {"corrupt_npy": 1, "missing_cls": 1}
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert {e[0] for e in progress["skip_examples"]} == {"bad_npy", "no_label"}


@pytest.mark.slow  # a subprocess
def test_cli_export_graphs_and_missing_export(setup, tmp_path):
    r = subprocess.run([sys.executable, "-m", "train", "export-graphs", "--checkpoint",
                        str(setup["ckpt"]), "--data", f"{setup['shards']}/train-000001.tar",
                        "--out", str(tmp_path / "cli"), "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "8 graphs in" in r.stdout and "0 videos skipped" in r.stdout
    with pytest.raises(FileNotFoundError, match="no region-graph export"):
        RegionGraphDataset(tmp_path / "nothing")


def _npy(arr):
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_dense_backend_graphs_equal_the_pyg_backend():
    """The dense backend builds no PyG graph: its nodes are recomputed with node_states."""
    from dyreg_pyg import DyRegBlock
    from dyreg_pyg.export import record_region_graphs

    torch.manual_seed(0)
    kw = dict(num_nodes=4, node_channels=8, spatial_size=(6, 6), gate_init=0.5)
    pyg = DyRegBlock(16, **kw).eval()
    dense = DyRegBlock(16, backend="dense", **kw).eval()
    dense.load_state_dict(pyg.state_dict())
    x = torch.randn(2, 3, 16, 6, 6)
    labels = torch.tensor([1, 0])
    a = record_region_graphs(pyg, pyg, x, ["a", "b"], labels)
    b = record_region_graphs(dense, dense, x, ["a", "b"], labels)
    assert pyg.last is None and not pyg.record  # the block is left as it was
    for ga, gb in zip(a, b):
        assert ga.x.shape == (3 * 4, 8) and ga.video_id == gb.video_id
        assert torch.allclose(ga.x, gb.x, atol=1e-5)
        assert torch.equal(ga.edge_index, gb.edge_index) and torch.equal(ga.region, gb.region)


def test_pyg_transforms_work_on_the_exported_graphs(setup):
    """AddSelfLoops (with the self-loop's edge_attr), ToUndirected, Distance, Cartesian and
    to_hetero on the exported items, batched by PyG's DataLoader into a GATv2Conv with
    edge_dim."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import GATv2Conv

    ds = RegionGraphDataset(setup["out"])
    g0 = ds[0]
    e0, n = g0.edge_index.shape[1], g0.num_nodes
    assert e0 == T * 9 * 9 + (T - 1) * 9
    fill = self_loop_edge_attr(True)
    looped = transforms.AddSelfLoops(attr="edge_attr", fill_value=fill)(g0.clone())
    assert looped.edge_index.shape[1] == looped.edge_attr.shape[0] == e0 + n
    assert bool((looped.edge_attr[e0:] == fill).all())
    # the added rows are what the geometry of a self-loop is
    torch.testing.assert_close(looped.edge_attr, with_geometry(looped.clone()).edge_attr)
    und = transforms.ToUndirected()(g0.clone())  # + the reversed temporal edges
    assert und.edge_index.shape[1] == und.edge_attr.shape[0] == e0 + (T - 1) * 9
    fixed = RegionGeometry()(und.clone())  # ToUndirected sums an edge's attrs with its reverse's
    src, dst = fixed.edge_index
    torch.testing.assert_close(fixed.edge_attr[:, 2:4], fixed.pos[src] - fixed.pos[dst])
    assert torch.equal(fixed.edge_attr[:, 1] == 1, fixed.frame[src] != fixed.frame[dst])
    geo = transforms.Compose([transforms.Distance(norm=False), transforms.Cartesian(norm=False)])
    d = geo(g0.clone())
    assert d.edge_attr.shape == (e0, 8 + 1 + 2)
    torch.testing.assert_close(d.edge_attr[:, 8], g0.edge_attr[:, 4])  # distance
    torch.testing.assert_close(d.edge_attr[:, 9:], g0.edge_attr[:, 2:4])  # dx, dy
    pipeline = transforms.Compose([transforms.ToUndirected(), RegionGeometry(),
                                   transforms.AddSelfLoops(attr="edge_attr", fill_value=fill)])
    batch = next(iter(DataLoader(RegionGraphDataset(setup["out"], transform=pipeline),
                                 batch_size=4)))
    out = GATv2Conv(64, 8, edge_dim=8)(batch.x, batch.edge_index, batch.edge_attr)
    assert out.shape == (4 * n, 8) and bool(torch.isfinite(out).all())
    assert batch.edge_attr.shape[0] == batch.edge_index.shape[1] == 4 * (e0 + (T - 1) * 9 + n)
    h = to_hetero(looped)
    assert h["region", "spatial", "region"].edge_index.shape[1] == T * 9 * 9 + n
    assert h["region", "temporal", "region"].edge_attr.shape == ((T - 1) * 9, 8)
    assert int(h.y) == int(g0.y) and h["region"].pos.shape == (n, 2)


def _write_v1_export(src: RegionGraphDataset, root: Path, count: int) -> None:
    """An export as the code before issue 35 wrote it (format v1: no pos / edge_attr
    columns; the same table, schema and export.json otherwise)."""
    from torch_geometric.data import OnDiskDataset

    c = src.num_node_features
    f32, i64 = torch.float32, torch.long
    schema = {"x": dict(dtype=f32, size=(-1, c)), "edge_index": dict(dtype=i64, size=(2, -1)),
              "edge_type": dict(dtype=i64, size=(-1,)), "region": dict(dtype=f32, size=(-1, 4)),
              "box": dict(dtype=f32, size=(-1, 4)), "frame": dict(dtype=i64, size=(-1,)),
              "region_id": dict(dtype=i64, size=(-1,)), "y": int, "video_id": str}
    keys = ("x", "edge_index", "edge_type", "region", "box", "frame", "region_id")

    class RegionGraphDataset(OnDiskDataset):  # the table is named after the class
        def serialize(self, data):
            return {**{k: data[k] for k in keys}, "y": int(data.y), "video_id": data.video_id}

    meta = {**src.meta, "format": EXPORT_FORMAT_V1}
    meta.pop("edge_attr_columns")
    root.mkdir()
    (root / "export.json").write_text(json.dumps(meta))
    old = RegionGraphDataset(str(root), backend="sqlite", schema=schema, log=False)
    old.extend([src[i] for i in range(count)])
    old.close()


def test_a_v1_export_opens_with_its_geometry_computed_on_load(setup, tmp_path):
    new = RegionGraphDataset(setup["out"])
    _write_v1_export(new, tmp_path / "v1", 3)
    old = RegionGraphDataset(tmp_path / "v1")
    assert len(old) == 3 and old.format == EXPORT_FORMAT_V1
    for i in range(3):
        a, b = old[i], new[i]
        assert a.video_id == b.video_id
        for key in ("x", "edge_index", "edge_type", "region", "pos", "edge_attr"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    looped = RegionGraphDataset(tmp_path / "v1", transform=transforms.AddSelfLoops(
        attr="edge_attr", fill_value=self_loop_edge_attr(True)))[0]
    assert looped.edge_attr.shape[0] == looped.edge_index.shape[1]
    # the exporter does not extend it: it says to export again
    with pytest.raises(ValueError, match="older format.*export again"):
        export_graphs(str(setup["ckpt"]), setup["data"], str(tmp_path / "v1"), progress=False)
    (tmp_path / "v1" / "export.json").write_text(json.dumps({"format": "something v0"}))
    with pytest.raises(ValueError, match="something v0.*export it again"):
        RegionGraphDataset(tmp_path / "v1")

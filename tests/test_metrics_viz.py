import json

import numpy as np
import pytest
import torch

from dyreg_pyg.metrics import (
    DistanceMeter,
    confusion_matrix,
    region_object_distance,
    topk_correct,
)
from dyreg_pyg.viz import NODE_COLOURS, draw_regions, export_regions, save_regions_gif


def test_topk_and_confusion():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, (1, 2)) == {1: 1, 2: 2}
    cm = confusion_matrix(logits.argmax(-1), labels, 3)
    assert cm.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_region_object_distance_nearest_region():
    regions = torch.tensor([[[0.1, 0.1], [0.9, 0.9]]])  # 1 frame, 2 regions
    objects = torch.tensor([[[0.1, 0.4], [0.5, 0.5], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    total, count = region_object_distance(regions, objects, mask)
    expected = 0.3 + float(np.hypot(0.4, 0.4))
    assert count == 2 and total == pytest.approx(expected, rel=1e-6)
    meter = DistanceMeter()
    meter.update(regions, objects, mask)
    meter.update(regions, objects[:, :1], None)
    assert meter.count == 3 and meter.value == pytest.approx((expected + 0.3) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="frames"):
        region_object_distance(regions, objects.repeat(2, 1, 1))


def test_draw_regions_colours_and_size(tmp_path):
    frames = torch.zeros(3, 1, 16, 20, dtype=torch.uint8)
    regions = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]]).expand(3, 2, 4)
    kernels = torch.rand(3, 2, 4, 5)
    gt = [[[2, 2, 6, 6]]] * 3
    img = draw_regions(frames, regions, kernels, gt, (20, 16), scale=4)
    assert img.size == (3 * 80, 2 * 64)
    arr = np.asarray(img)
    top = arr[:64]
    for colour in NODE_COLOURS[:2]:
        assert (top == colour).all(-1).sum() > 20  # each node's box is drawn in its colour
    assert (top == (255, 255, 255)).all(-1).sum() > 10  # ground-truth box in white
    assert (top == NODE_COLOURS[2]).all(-1).sum() == 0  # no third node
    assert arr[64:].sum() > 0  # heat-map row is not empty
    p = tmp_path / "r.png"
    img.save(p)
    assert p.stat().st_size > 0
    g = save_regions_gif(tmp_path / "r.gif", frames, regions)
    assert g.stat().st_size > 0
    j = export_regions(tmp_path / "r.json", ["a"], regions.unsqueeze(0), "layer2")
    data = json.loads(j.read_text())
    assert data["a"]["frames"][0][0] == pytest.approx([0.05, 0.05, 0.45, 0.45])

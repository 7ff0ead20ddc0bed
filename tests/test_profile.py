from dyreg_pyg.models import build_preset
from dyreg_pyg.profile import profile_model


def test_profile_splits_backbone_and_dyreg():
    with_graph = build_preset("syncmnist_r18_dyreg", num_frames=2, input_size=32)
    bare = build_preset("syncmnist_r18_nograph", num_frames=2, input_size=32)
    p = profile_model(with_graph, 2, 32, channels=1)
    q = profile_model(bare, 2, 32, channels=1)
    assert q.flops_dyreg == 0 and q.params_dyreg == 0
    block = with_graph.dyreg_blocks()["layer2"]
    assert p.params_dyreg == sum(x.numel() for x in block.parameters())
    assert p.params_backbone == sum(x.numel() for x in bare.parameters())
    assert 0 < p.flops_dyreg < p.flops_total
    # the backbone part equals the bare model's count (conv FLOPs are input-determined)
    assert abs(p.flops_backbone - q.flops_total) <= 0.01 * q.flops_total

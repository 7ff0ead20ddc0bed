"""Video models: a timm 2-D backbone run per frame, DyReg blocks inserted by block name.

A :class:`~dyreg_pyg.module.DyRegBlock` is attached to a backbone block as its child
``dyreg_after`` and run by a forward hook on that block, so the backbone keeps its own module
tree and parameter names (a pretrained timm state dict loads unchanged) and the block names
used in ``dyreg_at`` are exactly ``backbone.named_modules()`` names. What this builder shares
with the 3-D one (:mod:`.video3d`) lives in :mod:`.base`; imports run
``factory -> video3d -> base`` and ``factory -> base``.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import timm
from torch import nn

from ..module import DyRegBlock, DyRegConfig
from .base import (
    VideoModel,
    as_config,
    attach_dyreg,
    block_config,
    check_block_names,
    feature_map_blocks,
    probe_maps,
    size_pair,
)
from .tsm import add_temporal_shift
from .video3d import VIDEO_RESNETS, build_video3d_model

# VideoModel, feature_map_blocks and attach_dyreg (from .base) stay importable from here.
__all__ = ["VideoModel", "build_video_model", "feature_map_blocks", "attach_dyreg"]

log = logging.getLogger(__name__)


def build_video_model(
    backbone: str,
    num_classes: int,
    num_frames: int,
    dyreg_at: Sequence[str] = (),
    dyreg: dict[str, Any] | DyRegConfig | None = None,
    shift: bool = False,
    in_chans: int = 3,
    pretrained_file: str | None = None,
    drop_rate: float = 0.5,
    input_size: int | tuple[int, int] | None = None,
    remove_stages: Sequence[str] = (),
    dyreg_per_block: Mapping[str, dict[str, Any]] | None = None,
    **timm_kwargs: Any,
) -> VideoModel:
    """Build a video model from a timm backbone name (or a torchvision video ResNet).

    Args:
        backbone: any ``timm`` model name producing 4-D feature maps (``resnet50``,
            ``regnety_002``, ``convnext_atto``, ``efficientnet_b0`` ...), created with
            ``timm.create_model``; or ``r3d_18`` / ``r2plus1d_18`` / ``mc3_18`` (torchvision)
            for a 3-D model whose DyReg blocks act on ``[B, C, T, H, W]`` maps.
        num_classes: classifier outputs.
        num_frames: ``T`` of the clips (DyReg and TSM fold time into the batch).
        dyreg_at: dotted backbone names of the blocks after which a :class:`DyRegBlock` goes
            (``["layer2.2", "layer3.4", "layer4.1"]`` is the paper's ResNet-50 ``r3-4-5``).
            Channels and map sizes are inferred by a dummy forward.
        dyreg: :class:`DyRegConfig` (or a dict of its fields) for every inserted block;
            ``spatial_size`` defaults to each block's map size.
        shift: temporal shift (TSM, 1/8 of the channels forward and 1/8 backward in time) in
            the residual branch of every block; timm ResNet-family models only.
        in_chans: input channels (1 for MultiSyncMNIST).
        pretrained_file: local ImageNet weights for the backbone (a timm / torchvision state
            dict, ``.pth`` or ``.safetensors``), loaded with timm's ``pretrained_cfg_overlay``
            mechanism (input conv adapted to ``in_chans``, classifier dropped). The hub is
            never contacted; ``pretrained=True`` without a file raises.
        drop_rate: dropout before the classifier.
        input_size: frame size ``H`` or ``(H, W)`` of the dummy forward that infers the map
            sizes; default: the backbone's own default input size.
        remove_stages: backbone children replaced by identity (``["layer4"]`` gives the
            3-stage ResNet-18 of the MultiSyncMNIST experiments).
        dyreg_per_block: ``{dyreg_at name: {field: value}}``, :class:`DyRegConfig` fields
            that differ at one block (e.g. the authors' 256-d nodes at ``layer4``).
        **timm_kwargs: passed on to ``timm.create_model`` (e.g. ``drop_path_rate``).

    Raises:
        ValueError: unknown backbone (with close timm names), a backbone without 4-D maps, a
            ``dyreg_at`` name that is not a block with a 4-D output (with the valid names),
            ``shift`` on a non-ResNet backbone, a missing ``pretrained_file``, bad sizes.
    """
    _check_arguments(num_classes, num_frames, in_chans, drop_rate, pretrained_file, timm_kwargs)
    cfg = as_config(dyreg)
    per_block = dict(dyreg_per_block or {})
    if set(per_block) - set(dyreg_at):
        raise ValueError(f"dyreg_per_block: names {sorted(set(per_block) - set(dyreg_at))} are "
                         f"not in dyreg_at {list(dyreg_at)}")

    if backbone in VIDEO_RESNETS:
        if shift or remove_stages or timm_kwargs or per_block:
            raise ValueError(
                f"backbone: shift / remove_stages / dyreg_per_block / timm keyword arguments "
                f"apply to 2-D timm backbones, not to the torchvision 3-D model {backbone!r}"
            )
        return build_video3d_model(backbone, num_classes, num_frames, dyreg_at, cfg,
                                   drop_rate, input_size, in_chans, pretrained_file)

    net = _timm_backbone(backbone, in_chans, pretrained_file, remove_stages, timm_kwargs)
    if input_size is None:
        input_size = net.pretrained_cfg.get("input_size", (in_chans, 224, 224))
    size = size_pair(input_size)
    # Map shapes do not depend on time: probe one frame, before the shift is added.
    try:
        shapes, out_shape = probe_maps(net, (1, in_chans, *size), dims=4)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(
            f"input_size: the dummy forward of {backbone!r} at {size} failed ({err}); pass "
            f"the frame size the backbone accepts"
        ) from err
    check_block_names(dyreg_at, net, shapes, dims=4)
    if len(out_shape) != 4:
        raise ValueError(
            f"backbone: {backbone!r} does not produce a 4-D feature map (output shape "
            f"{out_shape} at input {size}); use a convolutional model without global pooling"
        )
    if shift:
        n_shift = add_temporal_shift(net, num_frames)
        log.debug("%s: temporal shift in %d blocks", backbone, n_shift)
    for name in dyreg_at:
        c, h, w = shapes[name]
        bcfg = cfg
        if name in per_block:
            bcfg = cfg.replace(**per_block[name])
        attach_dyreg(net.get_submodule(name), DyRegBlock(c, block_config(bcfg, h, w)),
                     num_frames)
    fixed = bool(shift or dyreg_at)
    return VideoModel(net, num_classes, num_frames, out_shape[1], drop_rate, in_chans, size,
                      fixed_frames=fixed)


def _check_arguments(num_classes: int, num_frames: int, in_chans: int, drop_rate: float,
                     pretrained_file: str | None, timm_kwargs: dict[str, Any]) -> None:
    """:func:`build_video_model`'s checks of its plain arguments (``pretrained`` is taken out
    of ``timm_kwargs``: hub weights are refused)."""
    for arg, value in (("num_classes", num_classes), ("num_frames", num_frames),
                       ("in_chans", in_chans)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}: expected a positive integer, got {value!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate: expected a probability in [0, 1), got {drop_rate}")
    if timm_kwargs.pop("pretrained", False):
        raise ValueError(
            "pretrained: hub weights are never downloaded (no network is assumed); pass "
            "pretrained_file=<local state-dict file> instead"
        )
    if pretrained_file is not None and not os.path.isfile(pretrained_file):
        raise ValueError(f"pretrained_file: no such file {pretrained_file!r}")


def _timm_backbone(backbone: str, in_chans: int, pretrained_file: str | None,
                   remove_stages: Sequence[str], timm_kwargs: dict[str, Any]) -> nn.Module:
    """The timm model ``backbone`` without classifier nor pooling, its weights from
    ``pretrained_file`` when given, the ``remove_stages`` children replaced by identity."""
    names = timm.list_models()
    if backbone not in names and backbone.split(".")[0] not in names:
        close = difflib.get_close_matches(backbone, names, n=5)
        raise ValueError(
            f"backbone: unknown model {backbone!r}; close timm names: {close} (torchvision "
            f"3-D: {list(VIDEO_RESNETS)})"
        )
    create_kw: dict[str, Any] = dict(num_classes=0, global_pool="", in_chans=in_chans)
    if pretrained_file is not None:
        create_kw.update(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file))
    try:
        net = timm.create_model(backbone, **{**create_kw, **timm_kwargs})
    except RuntimeError as err:
        if pretrained_file is None:
            raise
        raise ValueError(
            f"pretrained_file: {pretrained_file!r} does not fit backbone {backbone!r}: {err}"
        ) from err
    if pretrained_file is not None:
        log.info("%s: loaded ImageNet weights from %s", backbone, pretrained_file)
    for stage in remove_stages:
        if stage not in dict(net.named_children()):
            raise ValueError(f"remove_stages: {stage!r} is not a child of {backbone!r}; "
                             f"children: {[n for n, _ in net.named_children()]}")
        setattr(net, stage, nn.Identity())
    return net

"""Can the DyReg graph (RSTG spatial messages + GRU temporal updates) detect synchrony at all?

A diagnostic without images: each MultiSyncMNIST video becomes its 5 digits' true positions
``(x, y)`` over the 10 frames, one node per digit, and the task is to say which digits move
in sync (a per-node binary label, ``meta["in_sync"]``; about half the nodes are in sync). The
same graph stack as :class:`~dyreg_pyg.DyRegGNN` (K iterations of a spatial layer and the
temporal update, shared weights) reads an embedding of the positions; a linear head reads each
node's last state. Variants, side by side on the same data and steps:

* ``graph``: spatial messages between the nodes of a frame + GRU over time (DyReg's stack);
* ``no_messages``: the GRU alone - no node can see another, so this is the chance control.

    python study/gnn_sync_probe.py --train 20000 --val 2000 --steps 3000

``--flavor authors`` swaps in the graph stack of the authors' released code
(:func:`dyreg_pyg.nn.stack.authors_graph_stack`, as ``DyRegConfig(flavor="authors")`` runs it):
a LayerNorm over the frame's nodes, then K x (one internal GRU shared by the iterations, then
their space step :class:`~dyreg_pyg.nn.conv.AuthorsRSTGConv` with message and update
LayerNorms and a residual), then an external GRU. Its ``no_messages`` control runs the same
stack, same parameters, with every node as its own one-node graph: each node receives only
its own message and the LayerNorms over the frame's nodes become per node, so no node sees
another (not even through normalisation statistics).

    python study/gnn_sync_probe.py --flavor authors --train 20000 --val 2000 --steps 3000

Prints per-node accuracy, the accuracy of whole videos (every node right) and the ratio to
the control.

``--task label`` asks for the video's real 56-way MultiSyncMNIST label instead: each node
also gets its digit's class (one-hot), and a linear head reads the mean of the nodes' last
states. Knowing the classes but not the synchrony caps accuracy at the appearance-only
ceiling (31.98 %, ``study/appearance_ceiling.py``); this measures how many videos a
graph with perfect node inputs needs to go beyond it.

    python study/gnn_sync_probe.py --task label --train 50000 --steps 6000

``--variant``, ``--digits``, ``--frames``, ``--p-no-sync`` and ``--geometry`` change the
videos (:class:`~dyreg_pyg.data.SyncMNISTConfig`): the candidates for a reduced task on which
motion is learnt within CPU budgets (issue 15 item 5), e.g. two digits, in sync half of the
time (the label: their class pair, or "no sync"; appearance-only ceiling ~50 %):

    python study/gnn_sync_probe.py --task label --variant single --digits 2 --p-no-sync 0.5

``--task anysync`` asks one bit per video - does anything move in sync - through the same
video head (two outputs) from the positions alone (the classes are not inputs: under
SyncMNIST's rule they say nothing about it); its motion-blind ceiling is the share of the
likelier answer (use ``--p-no-sync 0.5``).

``--classes-at head`` gives the label task's digit classes to the video head only (counted,
beside the mean node state) instead of to every node: the graph then sees positions alone;
``--classes-at nodes`` gives them to the nodes in ``anysync`` too. ``--pos-scale`` multiplies
the positions (the inputs' scale against the one-hot classes).

``--layer`` swaps the paper stack's spatial layer for a PyG layer, as ``DyRegConfig.gnn`` does
(the table a user trying other GNN layers wants, on this diagnostic task):

    python study/gnn_sync_probe.py --layer GATv2Conv --variants graph

``--edge-attr offsets|motion`` (issue 35 item 6: does geometry help?) also hands the spatial
layer edge attributes computed from the nodes' true positions (after ``--pos-scale``), on the
frame graphs' edges ``j -> i`` (self-loops included), with :mod:`dyreg_pyg.geometry`'s offset
and distance:

* ``offsets``: ``(dx, dy, distance)`` = ``c_j - c_i`` and its length, within the frame - what
  the module's frame graphs carry from their regions (the first three of
  :data:`~dyreg_pyg.geometry.GEOMETRY_COLUMNS`; the probe's digits have no size, so no size
  ratio or IoU);
* ``motion``: those three, then ``(ddx, ddy, dd)`` = how the same offset changed since the
  previous frame, ``(c_j - c_i)(t) - (c_j - c_i)(t - 1)`` (0 in the first frame), and its
  length: the relative offset across frames. It is ``v_j - v_i``, the difference of the two
  nodes' displacements, so ``dd`` is 0 in every frame exactly when the two move in sync.

Why across-frame relations come as columns on the frame edges rather than as a space-time
graph: the stack's time step is the per-node GRU, so the spatial layer sees one frame at a
time. An edge from ``j`` at ``t - 1`` to ``i`` at ``t`` would carry ``c_j(t-1) - c_i(t)``,
the pair's old offset minus ``i``'s own motion; telling whether ``j`` and ``i`` move together
from it needs the old within-frame offset as well, which the layer at ``t`` does not see (only
the GRU could remember it), and running the layer on a graph that spans frames changes the
paper's stack (space would then also mix time, next to the GRU) and doubles its edges. The
change of the within-frame offset is that relation computed where the layer can read it, on
the edges it already has. The distances are there because layers that project
``edge_attr`` linearly cannot form a length themselves (as in :mod:`dyreg_pyg.geometry`).

Only layers whose forward takes ``edge_attr`` accept it: ``TransformerConv`` and
``GATv2Conv`` (built with ``edge_dim``) and ``GINEConv`` (the 2-layer MLP of ``GINConv``,
``edge_dim``); the probe builds them itself and runs the paper's stack (space, then GRU,
``K`` times, shared weights) with the edge attributes passed at every space step:

    python study/gnn_sync_probe.py --task label --layer TransformerConv --edge-attr motion
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dyreg_pyg.data.syncmnist import SyncMNISTConfig, generate_video, load_digit_pool
from dyreg_pyg.geometry import (
    GEOMETRY_COLUMNS,
    MOTION_COLUMNS,
    centre_distance,
    centre_offset,
    pair_motion,
)
from dyreg_pyg.graph import frame_edge_index
from dyreg_pyg.metrics.syncmnist_bounds import appearance_only_accuracy
from dyreg_pyg.nn import TemporalUpdate, make_spatial_layer
from dyreg_pyg.nn.kernels import region_kernels
from dyreg_pyg.nn.norm import GraphLayerNorm
from dyreg_pyg.nn.stack import authors_graph_stack, paper_graph_stack
from train.data import batch_object_boxes

log = logging.getLogger("gnn_sync_probe")


def make_positions(num: int, seed: int, cfg: SyncMNISTConfig | None = None,
                   regions: bool = False) -> tuple[Tensor, ...]:
    """Positions ``[num, T, N, 2]`` in ``[0, 1]``, in-sync flags ``[num, N]``, digit classes
    ``[num, N]`` and video labels ``[num]`` of ``cfg``'s videos (default: MultiSyncMNIST of
    the demo geometry; ``N = cfg.digits``). With ``regions``, a fifth tensor: the digits'
    boxes as regions ``[num, T, N, 4]`` exactly as ``train.data.batch_object_boxes`` gives
    them to the ``oracle`` model (each digit's ink box, in the frame)."""
    cfg = SyncMNISTConfig() if cfg is None else cfg
    pool = load_digit_pool("train")
    pos, flags, classes, labels, metas = [], [], [], [], []
    for i in range(num):
        _, label, meta = generate_video(cfg, pool, np.random.default_rng([seed, i]))
        pos.append(np.asarray(meta["positions"], np.float32) / (cfg.canvas - cfg.digit_size))
        flags.append(np.asarray(meta["in_sync"], np.float32))
        classes.append(meta["digit_classes"])
        labels.append(label)
        if regions:
            metas.append({"boxes": meta["boxes"]})
    out = (torch.from_numpy(np.stack(pos)), torch.from_numpy(np.stack(flags)),
           torch.tensor(classes), torch.tensor(labels))
    if not regions:
        return out
    frame = torch.zeros(1, cfg.frames, 1, cfg.size, cfg.size)  # only its shape is read
    boxes, mask = batch_object_boxes({"video": frame, "meta": metas})
    if boxes is None or not bool(mask.all()):
        raise RuntimeError("generated videos without a box for every digit and frame")
    return (*out, boxes)


def regions_to_kernel_inputs(regions: Tensor, grid: int) -> Tensor:
    """Regions ``[..., N, 4]`` -> their kernel maps (Eqs. 5-6) on a ``grid x grid`` feature
    map, flattened ``[..., N, grid**2]``: what the video model's position embedding reads."""
    return region_kernels(regions, grid, grid).flatten(-2)


EDGE_ATTR_COLUMNS: dict[str, tuple[str, ...]] = {
    "none": (),
    "offsets": GEOMETRY_COLUMNS[:3],
    "motion": GEOMETRY_COLUMNS[:3] + MOTION_COLUMNS,
}
"""The columns of each ``--edge-attr`` choice (see the module docstring)."""
EDGE_LAYERS = ("TransformerConv", "GATv2Conv", "GINEConv")
"""The spatial layers the probe builds with ``edge_dim`` for ``--edge-attr``."""


def probe_edge_attr(coords: Tensor, kind: str, self_loops: bool = True) -> Tensor:
    """Edge attributes ``[B*T*E, D]`` of the probe's frame graphs (edges in the order of
    :func:`~dyreg_pyg.graph.frame_edge_index` over the ``B*T`` frames) from the nodes'
    positions ``coords [B, T, N, 2]``; ``kind`` and the columns: :data:`EDGE_ATTR_COLUMNS`."""
    if kind not in EDGE_ATTR_COLUMNS or kind == "none":
        raise ValueError(f"edge attributes: expected 'offsets' or 'motion', got {kind!r}")
    b, t, n, _ = coords.shape
    edge_index = frame_edge_index(b * t, n, self_loops, coords.device)
    offset = centre_offset(coords.reshape(b * t * n, 2), edge_index)  # c_j - c_i, [B*T*E, 2]
    columns = [offset, centre_distance(offset)]
    if kind == "motion":  # the same pair's offset, one frame earlier (0 change in frame 0)
        columns.append(pair_motion(offset.view(b, t, -1, 2)).reshape(-1, 3))
    return torch.cat(columns, -1)


class GraphProbe(nn.Module):
    """Positions ``[B, T, N, 2]`` -> per-node logits ``[B, N]`` through the DyReg graph stack;
    with ``num_classes``, positions and digit classes ``[B, N]`` -> video logits
    ``[B, num_classes]`` (a linear head on the mean of the nodes' last states).

    Args:
        channels: node width.
        iterations: K rounds of (spatial messages, temporal update), weights shared.
        messages: whether nodes exchange messages (``False``: the control; ``paper``: no
            spatial layer, ``authors``: the same stack on one-node graphs).
        num_classes: ``None`` for the per-node in-sync task, else the video label's classes.
        flavor: ``"paper"`` (the paper's stack) or ``"authors"`` (their released code's).
        layer: the spatial layer of the paper's stack, as ``DyRegConfig.gnn`` names it
            (:func:`~dyreg_pyg.nn.make_spatial_layer`: ``"rstg"``, ``"GATv2Conv"``, ...).
        classes_at: where the digit classes enter: ``"nodes"`` (each node's input also holds
            its digit's class, one-hot: the label task's default), ``"head"`` (the video head
            reads the classes present, counted, beside the mean node state; the graph sees
            positions only) or ``None`` (not at all: the in-sync tasks' default).
        flavor: ``"paper"`` (RSTG then GRU, K times) or ``"authors"`` (the authors' stack,
            :func:`~dyreg_pyg.nn.stack.authors_graph_stack`).
        pos_features: how many numbers describe a node's position (2: coordinates; ``g**2``:
            a flattened kernel map, :func:`regions_to_kernel_inputs`).
        edge_attr: ``"none"`` or the edge attributes the spatial layer also reads
            (:data:`EDGE_ATTR_COLUMNS`, from the coordinates; paper flavour, ``layer`` one of
            :data:`EDGE_LAYERS`, ``pos_features == 2``).
    """

    def __init__(self, channels: int = 64, iterations: int = 3, messages: bool = True,
                 num_classes: int | None = None, flavor: str = "paper",
                 layer: str = "rstg", classes_at: str | None = "default",
                 pos_features: int = 2, edge_attr: str = "none") -> None:
        super().__init__()
        if flavor not in ("paper", "authors"):
            raise ValueError(f"flavor: expected 'paper' or 'authors', got {flavor!r}")
        if classes_at == "default":
            classes_at = None if num_classes is None else "nodes"
        if classes_at not in (None, "nodes", "head"):
            raise ValueError(f"classes_at: expected None, 'nodes' or 'head', got {classes_at!r}")
        self.classes_at = classes_at
        if edge_attr not in EDGE_ATTR_COLUMNS:
            raise ValueError(f"edge_attr: expected one of {list(EDGE_ATTR_COLUMNS)}, "
                             f"got {edge_attr!r}")
        if edge_attr != "none" and (flavor != "paper" or pos_features != 2):
            raise ValueError(f"edge_attr: needs the paper flavour and 2 coordinates per node, "
                             f"got flavor={flavor!r}, pos_features={pos_features}")
        self.edge_attr = edge_attr
        inputs = pos_features + 10 * (classes_at == "nodes")
        self.embed = nn.Sequential(nn.Linear(inputs, channels), nn.ReLU(),
                                   nn.Linear(channels, channels))
        if flavor == "paper":
            if not messages:
                self.spatial = None
            elif edge_attr == "none":  # the layer as it was built before edge geometry
                self.spatial = make_spatial_layer(layer, channels, geometry=False)
            elif layer not in EDGE_LAYERS:
                raise ValueError(f"layer: edge attributes need one of {EDGE_LAYERS}, got "
                                 f"{layer!r}")
            else:
                self.spatial = make_spatial_layer(layer, channels,
                                                  edge_dim=len(EDGE_ATTR_COLUMNS[edge_attr]))
            self.temporal = TemporalUpdate(channels, "gru")
        else:  # their modules, one internal GRU and one space step shared by the K iterations
            self.input_norm = GraphLayerNorm(channels)
            self.temporal_in = nn.ModuleList([TemporalUpdate(channels, "gru")])
            self.spatial_in = nn.ModuleList([make_spatial_layer("rstg_authors", channels)])
            self.temporal_out = TemporalUpdate(channels, "gru")
        self.head = nn.Linear(channels + 10 * (classes_at == "head"),
                              1 if num_classes is None else num_classes)
        self.iterations = iterations
        self.num_classes = num_classes
        self.flavor = flavor
        self.messages = messages

    def forward(self, pos: Tensor, classes: Tensor | None = None) -> Tensor:
        b, t, n, _ = pos.shape
        coords = pos[..., :2]  # before the classes join the node inputs
        if self.classes_at is not None:
            if classes is None:
                raise ValueError("classes: the label task needs the digit classes [B, N]")
            onehot = nn.functional.one_hot(classes, 10).to(pos.dtype)
            if self.classes_at == "nodes":
                pos = torch.cat([pos, onehot[:, None].expand(b, t, n, 10)], -1)
        if self.flavor == "authors":
            last = self._authors_stack(self.embed(pos))[:, -1]
        else:
            last = self._paper_stack(self.embed(pos), coords)
        if self.num_classes is None:
            return self.head(last).squeeze(-1)
        video = last.mean(1)
        if self.classes_at == "head":  # the classes present, counted, beside the graph's state
            video = torch.cat([video, onehot.sum(1)], -1)
        return self.head(video)

    def _authors_stack(self, v: Tensor) -> Tensor:
        """``[B, T, N, C]`` through the authors' stack; without messages each node is its own
        one-node graph (``[B*N, T, 1, C]``)."""
        b, t, n, c = v.shape
        if not self.messages:
            v = v.permute(0, 2, 1, 3).reshape(b * n, t, 1, c)
        out, _ = authors_graph_stack(v, self.input_norm, self.temporal_in, self.spatial_in,
                                     self.temporal_out, self.iterations)
        if not self.messages:
            out = out.reshape(b, n, t, c).permute(0, 2, 1, 3)
        return out

    def _paper_stack(self, v: Tensor, coords: Tensor) -> Tensor:
        """``[B, T, N, C]`` through (space, GRU) x K
        (:func:`~dyreg_pyg.nn.stack.paper_graph_stack`, as the module runs it); without
        messages the space step passes the nodes through. With ``edge_attr``, the same
        stack with the edge attributes of ``coords [B, T, N, 2]`` passed to the space step.
        Returns the last frame ``[B, N, C]``."""
        if self.edge_attr != "none" and self.spatial is not None:
            return self._edge_stack(v, probe_edge_attr(coords, self.edge_attr))[:, -1]
        spatial = self.spatial if self.spatial is not None else _NoMessages()
        out, _ = paper_graph_stack(v, [spatial], [self.temporal], self.iterations)
        return out[:, -1]


    def _edge_stack(self, v: Tensor, attr: Tensor) -> Tensor:
        """The paper's stack (space, then GRU, K times, as
        :func:`~dyreg_pyg.nn.stack.paper_graph_stack` runs it on complete frame graphs with
        self-loops), the space step called as ``layer(x, edge_index, attr)``."""
        b, t, n, c = v.shape
        edge_index = frame_edge_index(b * t, n, True, v.device)
        x = v.reshape(b * t * n, c)
        for _ in range(self.iterations):
            x = self.spatial(x, edge_index, attr)  # Eq. 8 with edge attributes
            x = self.temporal(x.view(b, t, n, -1)).reshape(b * t * n, -1)  # Eq. 9
        return x.view(b, t, n, -1)


class _NoMessages(nn.Module):
    """The control's space step: each node keeps its state (no messages)."""

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return x


def train_probe(model: GraphProbe, data: tuple[Tensor, ...], val: tuple[Tensor, ...],
                steps: int, batch_size: int, lr: float, seed: int,
                eval_every: int = 0) -> dict[str, object]:
    """Adam with a one-cycle schedule on ``make_positions`` tuples; returns validation
    accuracy (per node and per video for the in-sync task, top-1 for the label task) and,
    with ``eval_every``, the validation curve ``{videos seen: accuracy}``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    pos, flags, classes, labels = data
    label_task = model.num_classes is not None

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            if label_task:
                out = {"top1": float((model(val[0], val[2]).argmax(-1) == val[3]).float().mean())}
            else:
                hit = (model(val[0]) > 0).float() == val[1]
                out = {"node_acc": float(hit.float().mean()),
                       "video_acc": float(hit.all(1).float().mean())}
        model.train()
        return out

    curve: dict[int, float] = {}
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(pos), (batch_size,), generator=gen)
        if label_task:
            loss = nn.functional.cross_entropy(model(pos[idx], classes[idx]), labels[idx])
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(model(pos[idx]), flags[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if eval_every and step % eval_every == 0 and step < steps:
            curve[step * batch_size] = next(iter(evaluate().values()))
            log.info("%d videos: %.4f (train loss %.4f)", step * batch_size,
                     curve[step * batch_size], loss.item())
    result: dict[str, object] = {**evaluate(), "train_loss": loss.item()}
    curve[steps * batch_size] = next(iter(evaluate().values()))
    result["curve"] = curve
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("sync", "label", "anysync"), default="sync",
                    help="per-node in-sync flags, the video label (56-way MultiSyncMNIST, 46-way "
                         "SyncMNIST), or one bit per video: is anything in sync")
    ap.add_argument("--train", type=int, default=20_000, help="training videos")
    ap.add_argument("--val", type=int, default=2_000, help="validation videos")
    ap.add_argument("--steps", type=int, default=3_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=0, help="steps between validations")
    ap.add_argument("--variants", default="graph,no_messages")
    ap.add_argument("--flavor", choices=("paper", "authors"), default="paper",
                    help="graph stack: the paper's text (RSTG then GRU, K times) or the "
                         "authors' released code (dyreg_pyg.nn.stack.authors_graph_stack)")
    ap.add_argument("--layer", default="rstg",
                    help="spatial layer of the paper flavour's stack (DyRegConfig.gnn: rstg or a "
                         "torch_geometric.nn conv name, e.g. GATv2Conv, TransformerConv, GINConv)")
    ap.add_argument("--classes-at", choices=("none", "nodes", "head"), default=None,
                    help="where the digit classes enter: each node's input (default of --task "
                         "label), only the video head (beside the mean node state), or nowhere "
                         "(default of the in-sync tasks)")
    ap.add_argument("--pos-scale", type=float, default=1.0,
                    help="multiply the positions (in [0, 1] of the canvas) by this")
    ap.add_argument("--pos-input", choices=("coords", "kernel"), default="coords",
                    help="a node's position as its 2 coordinates, or as the kernel map of its "
                         "region (the digit's ink box, as the oracle model gets it) on a "
                         "--grid x --grid map (what the video model's position embedding "
                         "reads); --pos-scale multiplies either")
    ap.add_argument("--grid", type=int, default=8,
                    help="feature-map size of --pos-input kernel (8: the demo's 64-pixel "
                         "frames after layer2; 16: the authors' 128-pixel ones)")
    ap.add_argument("--geometry", default="demo", help="SyncMNISTConfig geometry of the videos")
    ap.add_argument("--variant", default=None, choices=("multi", "single"),
                    help="MultiSyncMNIST (56 classes) or SyncMNIST (exactly 2 in sync, distinct "
                         "classes, 46); default: the geometry's")
    ap.add_argument("--digits", type=int, default=None, help="digits per video (default 5)")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default 10)")
    ap.add_argument("--p-no-sync", type=float, default=None,
                    help="probability that nothing is in sync (default: 1 / classes)")
    ap.add_argument("--edge-attr", choices=tuple(EDGE_ATTR_COLUMNS), default="none",
                    help="edge attributes from the true positions for the spatial layer: "
                         "within-frame offsets (dx, dy, distance), or those and their change "
                         "since the previous frame (motion); needs --layer one of "
                         + ", ".join(EDGE_LAYERS))
    ap.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = ap.parse_args()
    cfg = SyncMNISTConfig.from_geometry(args.geometry, variant=args.variant, digits=args.digits,
                                        frames=args.frames, p_no_sync=args.p_no_sync)
    variants = args.variants.split(",")
    if not variants or set(variants) - {"graph", "no_messages"}:
        raise SystemExit(f"--variants: expected some of graph,no_messages, got {args.variants}")
    if args.flavor == "authors" and args.layer != "rstg":
        raise SystemExit("--layer: only the paper flavour's stack takes another spatial layer")
    if args.edge_attr != "none" and (args.layer not in EDGE_LAYERS or args.flavor != "paper"
                                     or args.pos_input != "coords"):
        raise SystemExit(f"--edge-attr: needs --flavor paper, --pos-input coords and --layer "
                         f"one of {', '.join(EDGE_LAYERS)}, got --layer {args.layer}")
    if args.classes_at not in (None, "none") and args.task == "sync":  # before making data
        raise SystemExit("--classes-at: the per-node task reads positions only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    kernel = args.pos_input == "kernel"
    data = make_positions(args.train, args.seed, cfg, regions=kernel)
    val = make_positions(args.val, 7919, cfg, regions=kernel)
    log.info("positions of %d + %d videos in %.0f s; in-sync share %.3f", args.train, args.val,
             time.time() - t0, float(val[1].mean()))
    num_classes = {"label": cfg.num_classes, "anysync": 2}.get(args.task)
    classes_at = args.classes_at or ("nodes" if args.task == "label" else "none")
    classes_at = None if classes_at == "none" else classes_at
    if kernel:  # the oracle's regions as kernel maps replace the coordinates
        data, val = ((regions_to_kernel_inputs(d[4], args.grid), *d[1:4]) for d in (data, val))
    data, val = ((d[0] * args.pos_scale, *d[1:]) for d in (data, val))
    if args.task == "anysync":  # the video's label becomes "something moves in sync"
        data = (*data[:3], data[1].amax(1).long())
        val = (*val[:3], val[1].amax(1).long())
    results = {}
    for name in variants:
        messages = name == "graph"
        torch.manual_seed(args.seed)
        t0 = time.time()
        model = GraphProbe(messages=messages, num_classes=num_classes, flavor=args.flavor,
                           layer=args.layer,
                           classes_at=classes_at, pos_features=data[0].shape[-1],
                           edge_attr=args.edge_attr)
        results[name] = train_probe(model,
                                    data, val, args.steps, args.batch_size, args.lr, args.seed,
                                    args.eval_every)
        results[name]["seconds"] = round(time.time() - t0)
        log.info("%s (%s flavour): %s (%.0f s)", name, args.flavor, results[name],
                 time.time() - t0)
    ceiling = {"label": appearance_only_accuracy(cfg),  # motion-blind; anysync: classes say
               "anysync": max(cfg.no_sync_probability, 1 - cfg.no_sync_probability)  # nothing
               }.get(args.task)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "config": asdict(cfg),
                                              "appearance_only_ceiling": ceiling,
                                              "results": results}, indent=1))
    if ceiling is not None:
        print(f"| variant | top-1 % |\n|---|---|\n| appearance-only ceiling | "
              f"{100 * ceiling:.2f} |")
        for name, r in results.items():
            print(f"| {name} | {100 * r['top1']:.2f} |")
        for name, r in results.items():
            curve = " ".join(f"{k}: {100 * v:.1f}" for k, v in r["curve"].items())
            print(f"{name} top-1 % along the run (videos seen: %): {curve}")
        return
    print("| variant | node accuracy | video accuracy |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['node_acc']:.2f} | {100 * r['video_acc']:.2f} |")
    if len(results) == 2:
        g, c = results["graph"], results["no_messages"]
        print(f"graph / no_messages: node accuracy x{g['node_acc'] / c['node_acc']:.2f}, "
              f"video accuracy x{g['video_acc'] / max(c['video_acc'], 1e-9):.2f}")


if __name__ == "__main__":
    main()

"""Multi-node training on this machine: two ``torchrun`` "nodes" (one process each, gloo on CPU)
meet at a c10d rendezvous on 127.0.0.1 and train from the same shards.

Checked: with ``data.train_shards=split`` each training sample is read once per epoch over
the two nodes (tests/multinode_fit.py records the keys each rank reads); a node killed mid-run
makes the other exit at once with an error saying what happened; ``--resume auto`` on both
nodes then finishes the run with identical replicas. A frozen peer (two plain processes of a
gloo group) makes the other fail after ``dist_timeout``. Every wait is bounded: a hang fails
the test.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dyreg_pyg.data import write_syncmnist_shards
from train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 180  # s for a whole two-node run (start-up included)
DIST_TIMEOUT = 10     # s: dist_timeout of these runs


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("mn")
    write_syncmnist_shards(d, "train", 16, seed=1, size=32, shard_size=4)  # 4 shards
    write_syncmnist_shards(d, "val", 4, seed=2, size=32, shard_size=2)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sets(shards, out, epochs):
    return [
        f"data.train={shards}/train-{{000000..000003}}.tar",
        f"data.val={shards}/val-{{000000..000001}}.tar",
        f"out_dir={out}", "data.num_frames=4", "data.batch_size=2", "data.num_workers=0",
        "data.train_shards=split", f"epochs={epochs}", "ckpt_every=2",
        "model.overrides.num_frames=4", "model.overrides.input_size=32", "optim.name=adam",
        "optim.schedule=none", "threads=1", f"dist_timeout={DIST_TIMEOUT}",
    ]


def _launch(shards, out, logs, epochs, *extra, port=None):
    """Start the two nodes (each its own process group); their output goes to
    ``logs/node<i>.log``. Node 0 hosts the rendezvous store (on a cluster: the first node)."""
    port = port or _free_port()
    keys = out.parent / f"{out.name}-keys"
    keys.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
           "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}",
           "--max-restarts", "0"]
    args = [str(ROOT / "tests" / "multinode_fit.py"), "fit", "--config", "syncmnist_demo"]
    for s in _sets(shards, out, epochs):
        args += ["--set", s]
    args += list(extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "KEYS_DIR": str(keys)}
    procs = []
    for i in range(2):
        with open(logs / f"node{i}.log", "w") as fh:
            conf = ["--rdzv-conf", f"join_timeout=120,is_host={int(i == 0)}"]
            procs.append(subprocess.Popen(cmd + conf + args, cwd=ROOT, env=env, stdout=fh,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    return procs, keys


def _descendants(pid):
    """Ids of the processes below ``pid`` (torchrun starts its workers in their own
    sessions, so the agent's process group does not hold them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill(proc, sig=signal.SIGKILL):
    """Signal a node: its torchrun agent (started here, in its own process group) and the
    workers below it."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait(procs, timeout):
    """Exit codes of ``procs``; a process still running after ``timeout`` s fails the test
    (every process is killed first)."""
    deadline = time.time() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.time())))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a node did not exit within {timeout} s (a hang)")
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
                p.wait(timeout=30)
    return codes


def _text(logs, i):
    return (logs / f"node{i}.log").read_text(errors="replace")


def _wait_for(logs, procs, timeout, needle):
    """Wait until a node's log shows ``needle``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(needle in _text(logs, i) for i in range(2)):
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        _kill(p)
    pytest.fail(f"no node logged {needle!r} within {timeout} s:\n{_text(logs, 0)[-2000:]}\n"
                f"{_text(logs, 1)[-2000:]}")


def _all_keys(shards):
    keys = set()
    for tar in sorted(shards.glob("train-*.tar")):
        with tarfile.open(tar) as t:
            keys |= {m.name.split(".")[0] for m in t.getmembers()}
    return keys


def _epoch_keys(keys_dir, rank, seed):
    """The keys rank ``rank`` read from the training loader of seed ``seed`` (one epoch)."""
    path = keys_dir / f"rank{rank}.txt"
    pairs = [line.split() for line in path.read_text().splitlines()]
    return [k for s, k in pairs if int(s) == seed]


def test_two_nodes_split_the_epoch_survive_a_killed_node_and_resume(shards, tmp_path):
    """Two torchrun nodes train; node 1 is killed in epoch 2: node 0 exits at once with an
    error saying what happened; both nodes again with --resume auto finish the run, and the
    replicas end identical. The keys of epoch 1 show each sample read once over the nodes."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    epochs = 3  # 4 steps each (16 samples, 2 ranks x batch 2)
    procs, keys_dir = _launch(shards, out, logs, epochs)
    _wait_for(logs, procs, LAUNCH_TIMEOUT, "epoch 1: 4 steps")
    _kill(procs[1])  # node 1 (not the rendezvous host) dies
    t0 = time.time()
    codes = _wait([procs[0]], 60)  # a hang fails the test
    elapsed = time.time() - t0
    print(f"node 0 exited {elapsed:.1f} s after node 1 was killed")
    _wait([procs[1]], 30)
    text = _text(logs, 0)
    assert codes[0] != 0 and "training done" not in text, text[-3000:]
    assert "train fit: error:" in text and "another process of the job was lost" in text \
        and "--resume auto" in text, text[-3000:]
    assert elapsed < 30, elapsed  # a closed connection: at once, not after dist_timeout
    assert f"rank 0/2 initialised (gloo, cpu, timeout {DIST_TIMEOUT} s)" in \
        text + _text(logs, 1)
    # epoch 1 (loader seed 0): each sample read by exactly one rank, once
    per_rank = [_epoch_keys(keys_dir, r, 0) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 8  # 4 steps x batch 2 per rank
    a, b = set(per_rank[0]), set(per_rank[1])
    assert len(a) == len(b) == 8 and not a & b
    assert a | b == _all_keys(shards)
    step = load_checkpoint(out / "last.pt")["state"]["step"]
    assert 2 <= step < 4 * epochs
    # both nodes again with --resume auto: the run continues from last.pt and finishes
    procs, _ = _launch(shards, out, tmp_path / "logs2", epochs, "--resume", "auto")
    codes = _wait(procs, LAUNCH_TIMEOUT)
    text = _text(tmp_path / "logs2", 0) + _text(tmp_path / "logs2", 1)
    assert codes == [0, 0], text[-4000:]
    assert f"resumed from {out / 'last.pt'} at step {step}" in text
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 4 * epochs
    sums = json.loads((out / "replicas.json").read_text())["checksums"]
    assert sums[0] == sums[1]  # the two replicas' parameters are identical
    assert json.loads((out / "val_metrics.json").read_text())["samples"] == 4


_PEER = """
import sys, time
from train.dist import all_reduce_sum, peer_errors, setup_distributed
env = setup_distributed("cpu", timeout=float(sys.argv[1]))
print("ready", flush=True)
with peer_errors(float(sys.argv[1])):
    while True:
        all_reduce_sum([1.0], env.device)
        time.sleep(0.02)
"""


def test_frozen_peer_fails_the_other_after_dist_timeout(tmp_path):
    """A frozen peer (stopped: its connections stay open, nothing comes) makes the other
    process fail after dist_timeout with the lost-peer error, not wait forever."""
    timeout, port = 3, _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": "0", "PYTHONUNBUFFERED": "1"}
        with open(tmp_path / f"p{rank}.log", "w") as fh:
            procs.append(subprocess.Popen([sys.executable, "-c", _PEER, str(timeout)], cwd=ROOT,
                                          env=env, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    deadline = time.time() + 120
    while not all("ready" in (tmp_path / f"p{r}.log").read_text() for r in range(2)):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                _kill(p)
            pytest.fail("the two processes did not start: " +
                        (tmp_path / "p0.log").read_text()[-2000:])
        time.sleep(0.05)
    _kill(procs[1], signal.SIGSTOP)
    t0 = time.time()
    try:
        codes = _wait([procs[0]], timeout + 60)
        elapsed = time.time() - t0
        print(f"rank 0 exited {elapsed:.1f} s after rank 1 froze (dist_timeout={timeout} s)")
    finally:
        _kill(procs[1])
        _wait([procs[1]], 30)
    text = (tmp_path / "p0.log").read_text()
    assert codes[0] != 0
    assert "PeerLostError" in text and f"dist_timeout={timeout}" in text, text[-3000:]
    assert timeout - 1 <= elapsed < timeout + 60, elapsed

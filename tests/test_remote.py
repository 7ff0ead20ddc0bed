"""Shards over HTTP (a server on 127.0.0.1 in a thread, port 0) and from ``pipe:`` commands:
reading, a dropped connection, a stalled server or command (bounded by ``read_timeout``),
HTTP errors; the ``train_shards="split"`` training order; and a ``python -m train fit`` run
from HTTP shards whose server drops one of them."""

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dyreg_pyg.data import ClipLoaderConfig, make_clip_loader, write_syncmnist_shards
from dyreg_pyg.data import remote as remote_mod
from dyreg_pyg.data.remote import ShardStalledError, open_shard
from train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    write_syncmnist_shards(d, "train", 16, seed=1, size=32, shard_size=8)  # 2 shards
    write_syncmnist_shards(d, "val", 8, seed=2, size=32, shard_size=4)     # 2 shards
    return d


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the shards; ``server.faults`` maps a file name to ``"drop"`` (send half the
    body, then close the connection), ``"drop_once"`` (the same, the first time only) or
    ``"stall"`` (send half, then wait 30 s)."""

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        name = self.path.rpartition("/")[2]
        self.server.requests.append(name)
        fault = self.server.faults.get(name)
        if fault is None:
            return super().copyfile(source, outputfile)
        if fault == "drop_once":
            del self.server.faults[name]
        data = source.read()
        outputfile.write(data[: len(data) // 2])
        outputfile.flush()
        if fault == "stall":
            self.server.stop.wait(30)
        self.close_connection = True


@pytest.fixture
def server(shards):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Handler, directory=str(shards)))
    srv.faults, srv.requests, srv.stop = {}, [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(10)


def _keys(loader):
    return [k for b in loader for k in b["key"]]


def test_http_shards_read_like_local_ones(server, shards):
    url = f"{server.url}/val-{{000000..000001}}.tar"
    remote = make_clip_loader(url, "val", ClipLoaderConfig(num_frames=4, batch_size=3))
    local = make_clip_loader(f"{shards}/val-{{000000..000001}}.tar", "val", ClipLoaderConfig(
        num_frames=4, batch_size=3))
    assert _keys(remote) == _keys(local) and len(_keys(local)) == 8
    assert remote.skips.count == 0
    # the manifest came over HTTP too: classes and per-shard counts
    assert remote.dataset.p.num_classes == local.dataset.p.num_classes
    assert remote.dataset.p.shard_counts == {f"{server.url}/val-00000{i}.tar": 4 for i in (0, 1)}


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_http_cut_or_stalled_mid_shard_is_a_counted_shard_error(server, caplog, fault):
    server.faults["val-000001.tar"] = fault
    loader = make_clip_loader(f"{server.url}/val-{{000000..000001}}.tar", "val", ClipLoaderConfig(
        num_frames=4, batch_size=2, read_timeout=1))
    t0 = time.time()
    with caplog.at_level("WARNING"):
        keys = _keys(loader)
    assert time.time() - t0 < 15  # bounded: a stall costs read_timeout, not forever
    bad = f"{server.url}/val-000001.tar"
    assert 4 <= len(keys) < 8  # shard 0 whole, the part of shard 1 before the cut
    skips = loader.skips
    assert skips.reasons == {"shard_error": 8 - len(keys)}  # the lost samples, from the manifest
    key, reason, detail = skips.examples[0]
    assert key == f"<shard {bad}>" and reason == "shard_error"
    want = "connection closed after" if fault == "drop" else "no data for 1 s"
    assert want in detail, detail
    assert f"shard {bad}: shard error" in caplog.text and want in caplog.text


def test_http_errors_are_shard_errors(server, monkeypatch):
    monkeypatch.setattr(remote_mod, "_BACKOFF", 0.01)
    closed = f"http://127.0.0.1:{_closed_port()}/train-000000.tar"
    loader = make_clip_loader([f"{server.url}/missing-000000.tar", closed,
                               f"{server.url}/val-000000.tar"], "val",
                              ClipLoaderConfig(num_frames=4, batch_size=2, read_timeout=2))
    assert len(_keys(loader)) == 4
    details = {k: d for k, _, d in loader.skips.examples}
    assert "HTTP 404" in details[f"<shard {server.url}/missing-000000.tar>"]
    assert "cannot connect" in details[f"<shard {closed}>"]
    assert loader.skips.reasons == {"shard_error": 2}


def _closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once returned: nobody listens


def test_pipe_commands_read_stall_and_fail_with_their_error(shards):
    good = f"pipe:cat {shards}/val-000000.tar"
    loader = make_clip_loader([good, "pipe:sleep 20", "pipe:echo 'NoSuchKey: no such key' >&2;"
                               " exit 3"], "val",
                              ClipLoaderConfig(num_frames=4, batch_size=2, read_timeout=1))
    t0 = time.time()
    assert len(_keys(loader)) == 4
    assert time.time() - t0 < 10  # the sleeping command was killed after read_timeout
    details = {k: d for k, _, d in loader.skips.examples}
    assert "gave no data for 1 s" in details["<shard pipe:sleep 20>"]
    failed = details["<shard pipe:echo 'NoSuchKey: no such key' >&2; exit 3>"]
    assert "exited with status 3" in failed and "NoSuchKey" in failed


def test_pipe_of_concatenated_archives_yields_every_archive(shards):
    """tarfile stops at the first end-of-archive block: the zero blocks between archives are
    skipped and every archive of the stream is read (also compressed as one stream)."""
    a, b = shards / "train-000000.tar", shards / "train-000001.tar"
    want = sorted(_keys(make_clip_loader([str(a), str(b)], "val", ClipLoaderConfig(
        num_frames=4, batch_size=4))))
    assert len(want) == 16
    for cmd in (f"pipe:cat {a} {b}", f"pipe:cat {a} {b} | gzip -c",
                f"pipe:gzip -c {a}; gzip -c {b}"):
        loader = make_clip_loader(cmd, "val", ClipLoaderConfig(num_frames=4, batch_size=4))
        assert sorted(_keys(loader)) == want, cmd
        assert loader.skips.count == 0, (cmd, loader.skips.summary())


def test_pipe_that_exits_non_zero_after_its_data_is_a_named_shard_error(shards, caplog):
    cmd = f"pipe:cat {shards}/train-000000.tar; exit 5"
    loader = make_clip_loader(cmd, "val", ClipLoaderConfig(num_frames=4, batch_size=4))
    with caplog.at_level("WARNING"):
        keys = _keys(loader)
    assert len(keys) == 8  # the archive itself was whole
    assert loader.skips.reasons == {"shard_error": 1}
    key, reason, detail = loader.skips.examples[0]
    assert key == f"<shard {cmd}>" and "exited with status 5" in detail
    assert f"shard {cmd}: shard error" in caplog.text


def test_data_after_an_archive_that_is_not_a_tar_is_a_shard_error(shards, tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes((shards / "train-000000.tar").read_bytes() + b"garbage!" * 64)
    loader = make_clip_loader(str(path), "val", ClipLoaderConfig(num_frames=4, batch_size=4))
    assert len(_keys(loader)) == 8
    assert loader.skips.reasons == {"shard_error": 1}


@pytest.fixture
def silent_server():
    """An HTTP address that accepts connections and never answers; ``.accepted`` counts
    them (one per request attempt)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    conns, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    srv = type("Silent", (), {})()
    srv.url, srv.accepted = f"http://127.0.0.1:{sock.getsockname()[1]}", conns
    yield srv
    stop.set()
    thread.join(5)
    for c in conns:
        c.close()
    sock.close()


@pytest.mark.parametrize("known", [False, True])
def test_manifest_reads_of_a_run_wait_read_timeout_not_60_s(silent_server, tmp_path,
                                                            monkeypatch, known):
    """data.read_timeout bounds every manifest fetch of a run; with data.num_classes and
    data.epoch_size set, the run itself fetches none (only the loader's, for the per-shard
    counts: OPEN_RETRIES + 1 attempts)."""
    from test_faults_data import bounded

    from train.config import load_config
    from train.loop import fit

    monkeypatch.setattr(remote_mod, "_BACKOFF", 0.01)
    sets = [f"data.train={silent_server.url}/train-{{000000..000001}}.tar",
            f"data.val={silent_server.url}/val-000000.tar", f"out_dir={tmp_path / 'run'}",
            "data.read_timeout=1", "data.num_workers=0", "data.num_frames=4",
            "model.overrides.num_frames=4", "model.overrides.input_size=32", "threads=1"]
    if known:
        sets += ["data.num_classes=56", "data.epoch_size=16"]
    t0 = time.time()
    with bounded(40), pytest.raises(OSError, match="no response in 1 s") as info:
        fit(load_config("syncmnist_demo", sets))
    assert time.time() - t0 < 30
    assert len(silent_server.accepted) == remote_mod.OPEN_RETRIES + 1
    where = {entry.name for entry in info.traceback}
    # who fetched: the run (the number of classes), or only the loader once both are set
    assert ("make_clip_loader" in where) == known and ("read_num_classes" in where) != known
    assert "read_class_names" not in where


@pytest.mark.parametrize("train_shards", ["resample", "split"])
def test_a_cut_shard_read_again_in_an_epoch_counts_its_loss_once(server, caplog,
                                                                  train_shards):
    """Shards re-read in one epoch (to fill the shuffle buffer; split mode's padding) lose
    the same samples again: each is counted once; the epoch line counts the batches
    handed out, the last one included."""
    names = ["train-000000.tar", "train-000001.tar"]
    for name in names:
        server.faults[name] = "drop"
    urls = f"{server.url}/train-{{000000..000001}}.tar"
    # one plain pass: what the cut shards lose (per the manifest: 8 samples each)
    once = make_clip_loader(urls, "val", ClipLoaderConfig(num_frames=4, batch_size=4))
    read = len(_keys(once))
    lost = once.skips.count
    assert 0 < read < 16 and lost == 16 - read and once.skips.reasons == {"shard_error": lost}
    loader = make_clip_loader(urls, "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=16, shuffle_buffer=32, train_shards=train_shards,
        seed=1))
    before = len(server.requests)
    with caplog.at_level("INFO", logger="dyreg_pyg.data.loader"):
        for epoch in range(2):
            it = iter(loader)
            batches = [next(it) for _ in range(len(loader))]  # as the training loop reads
            del it
            assert len(batches) == 8
            assert loader.epoch_skips.count == lost, loader.epoch_skips.summary()
            assert loader.epoch_skips.reasons == {"shard_error": lost}
            assert f"epoch {epoch}: 8 batches, {lost} samples skipped" in caplog.text
    assert len(server.requests) - before > 2 * len(names)  # the shards were read again
    assert loader.skips.count == 2 * lost  # once per epoch


@pytest.mark.parametrize(("epoch_size", "num_workers", "passes"), [(4, 0, 1), (4, 1, 1),
                                                                    (40, 0, 3)])
def test_a_short_run_fetches_each_http_shard_once_per_pass(server, epoch_size, num_workers,
                                                          passes):
    """Issue 36: 2 steps on 8 videos over HTTP made 252 shard GETs (the 1000-sample shuffle
    buffer filled by downloading the shards again). The buffer is bounded by the manifest's
    count and filled one pass at a time: each shard is fetched once per pass."""
    urls = f"{server.url}/train-{{000000..000001}}.tar"  # 16 samples in 2 shards of 8
    loader = make_clip_loader(urls, "train", ClipLoaderConfig(
        num_frames=4, batch_size=2, epoch_size=epoch_size, shuffle_buffer=1000,
        num_workers=num_workers))
    assert loader.dataset.pass_buffer() == 16
    before = len(server.requests)
    assert len(_keys(loader)) == epoch_size
    gets = Counter(n for n in server.requests[before:] if n.endswith(".tar"))
    assert gets == {"train-000000.tar": passes, "train-000001.tar": passes}


def test_losses_seen_on_several_ranks_in_one_epoch_count_once(monkeypatch):
    """Resampled shards: two ranks that read the same cut shard in one epoch lost the same
    samples; the epoch's count (train.validate.skip_counts, gathered over ranks) has them
    once."""
    import types

    import train.validate as validate_mod
    from dyreg_pyg.data.loader import EpochLosses, SkipCounter

    def rank(records):
        losses, skips = EpochLosses(), SkipCounter()
        skips.merge(losses.new(records))
        return types.SimpleNamespace(epoch_losses=losses, epoch_skips=skips)

    a = "<shard http://h/train-000000.tar>"
    r0 = rank([(a, "shard_error", "cut", 4), (a, "shard_error", "cut", 4),
               ("k1", "corrupt_npy", "")])
    r1 = rank([(a, "shard_error", "cut", 5), ("<shard http://h/train-000001.tar>",
                                                 "shard_short", "", 2),
               ("k1", "corrupt_npy", ""), ("k2", "corrupt_npy", "")])
    assert r0.epoch_skips.count == 5 and r1.epoch_skips.count == 9  # once per rank already
    gathered = [None]
    real = validate_mod.gather_objects

    def two_ranks(local):
        gathered[0] = local
        other = {"reasons": dict(r1.epoch_skips.reasons), "shards": [],
                 "losses": r1.epoch_losses.state()}
        return [real(local)[0], other]

    monkeypatch.setattr(validate_mod, "gather_objects", two_ranks)
    got = validate_mod.skip_counts(r0)
    # shard 0: its largest loss (5), shard 1: 2, samples k1 and k2 once each
    assert got["reasons"] == {"corrupt_npy": 2, "shard_error": 5, "shard_short": 2}
    assert got["count"] == 9  # summing the ranks would say 14


def test_open_shard_stall_is_not_a_timeout_error():
    # the loader lets TimeoutError (a stop from outside) propagate; a stall is a data error
    assert issubclass(ShardStalledError, OSError)
    assert not issubclass(ShardStalledError, TimeoutError)
    with pytest.raises(ValueError, match="read_timeout"):
        open_shard("pipe:true", timeout=0)


@pytest.mark.parametrize("num_shards", [4, 3])
def test_split_training_reads_each_sample_once_per_epoch_over_ranks(tmp_path, num_shards):
    """train_shards="split": the ranks' epochs partition the samples (workers included); with
    uneven shares (3 shards, 2 ranks) the short rank pads its epoch with resampled shards
    (and the long one leaves the end of its share: each rank makes epoch_size / 2 clips)."""
    per_shard = 4
    write_syncmnist_shards(tmp_path, "train", per_shard * num_shards, seed=3, size=16,
                           shard_size=per_shard)
    pattern = f"{tmp_path}/train-{{000000..{num_shards - 1:06d}}}.tar"
    epoch = per_shard * num_shards
    seen = []
    for rank in range(2):
        loader = make_clip_loader(pattern, "train", ClipLoaderConfig(num_frames=2, batch_size=2,
                                  num_workers=2 if num_shards == 4 else 0, epoch_size=epoch,
                                  train_shards="split", rank=rank, world_size=2, seed=5))
        seen.append(_keys(loader))
    assert [len(s) for s in seen] == [epoch // 2] * 2
    if num_shards == 4:  # even: an exact partition
        assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == epoch
    else:  # rank 0: 6 of its 8 samples; rank 1: its 4, then 2 from resampled shards
        assert len(set(seen[0])) == 6
        assert len(set(seen[1][:4])) == 4 and not set(seen[1][:4]) & set(seen[0])


def test_train_shards_and_read_timeout_are_checked(tmp_path):
    write_syncmnist_shards(tmp_path, "train", 2, seed=3, size=16, shard_size=2)
    with pytest.raises(ValueError, match="train_shards"):
        ClipLoaderConfig(num_frames=2, batch_size=2, train_shards="once")
    with pytest.raises(ValueError, match="read_timeout"):
        ClipLoaderConfig(num_frames=2, batch_size=2, read_timeout=-1)


@pytest.mark.slow
def test_fit_from_http_shards_with_a_dropped_connection(server, tmp_path):
    """python -m train fit from an HTTP server (num_classes and epoch size from its manifest);
    the server drops the first read of one training shard: the loss is logged and counted."""
    server.faults["train-000001.tar"] = "drop_once"
    out = tmp_path / "run"
    sets = [
        f"data.train={server.url}/train-{{000000..000001}}.tar",
        f"data.val={server.url}/val-{{000000..000001}}.tar",
        f"out_dir={out}", "data.num_frames=4", "data.batch_size=4", "data.num_workers=0",
        "data.train_shards=split", "epochs=1", "data.read_timeout=5",
        "model.preset=syncmnist_r18_dyreg",
        "model.overrides.num_frames=4", "model.overrides.input_size=32", "optim.name=adam",
        "optim.schedule=none", "threads=1",
    ]
    cmd = [sys.executable, "-m", "train", "fit", "--config", "syncmnist_demo"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    bad = f"{server.url}/train-000001.tar"
    assert f"shard {bad}: shard error: OSError('connection closed after" in text
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 4  # 16 samples / batch 4
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["samples"] == 8  # validation read whole over HTTP
    lost = metrics["train_skipped"]["reasons"]["shard_error"]
    assert 1 <= lost <= 8 and metrics["train_skipped"]["count"] == lost
    assert {"train-000000.tar", "train-000001.tar", "val-000000.tar",
            "train-manifest.json"} <= set(server.requests)


def test_slurm_script_launches_torchrun_per_node_with_resume(tmp_path):
    """scripts/slurm/train_multinode.sbatch with stand-ins for srun and scontrol: one torchrun
    per node, rendezvous on the first node, one process per GPU, --resume auto, shard
    patterns passed through unexpanded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\nprintf "gpu-a17\\ngpu-a18\\n"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_OUT":
           str(tmp_path / "args"), "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-a[17-18]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_CPUS_PER_TASK": "32",
           "TRAIN": "pipe:aws s3 cp s3://bucket/train-{000000..000007}.tar -"}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train_multinode.sbatch")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    args = (tmp_path / "args").read_text().splitlines()
    line = " ".join(args)
    assert "torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d" in line
    assert "--rdzv-endpoint gpu-a17:29500 --rdzv-id 4242" in line
    assert "-m train fit --config ssv2_tsm_r50_dyreg --resume auto" in line
    assert "data.train=pipe:aws s3 cp s3://bucket/train-{000000..000007}.tar -" in args
    assert "data.val=data/ssv2/validation-{000000..000099}.tar" in args

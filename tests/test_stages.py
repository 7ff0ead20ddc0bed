"""dyreg_pyg.data.stages in a plain WebDataset pipeline: the README's snippet, run as it is on
tiny shards, and the stages' loss counting next to stock webdataset stages."""

import re
from pathlib import Path

import pytest
import torch
import webdataset as wds

from dyreg_pyg.data import stages, write_syncmnist_shards

ROOT = Path(__file__).resolve().parents[1]


def _snippet() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- stages-snippet[^\n]*-->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md: the stages snippet is gone"
    return found.group(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("stages") / "shards"
    write_syncmnist_shards(d, "train", 12, seed=3, size=32, shard_size=6)  # 2 shards of 6
    return d


@pytest.mark.parametrize("truncate", [False, True])
def test_readme_stages_snippet_runs_and_counts_losses(shards, tmp_path, monkeypatch, truncate):
    work = tmp_path / "shards"
    work.mkdir()
    for p in shards.glob("train-*.tar"):
        data = p.read_bytes()
        if truncate and p.name.endswith("000001.tar"):
            data = data[: len(data) // 2]  # a shard cut in the middle: 3 samples or fewer left
        (work / p.name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_snippet(), "README.md", "exec"), ns)
    skips = ns["skips"]
    assert len(ns["loader"]) == 2 and ns["loader"].dataset.p.num_frames == 4
    if not truncate:
        assert ns["clips"] == 12 and skips.count == 0
    else:
        # 1 shard error (its count is unknown: no manifest given), and what it lost is missing
        assert skips.reasons == {"shard_error": 1}
        assert "train-000001.tar" in skips.examples[0][0]
        assert 6 <= ns["clips"] < 12


def test_tar_stage_counts_a_truncated_shards_loss_from_the_given_counts(shards, tmp_path):
    src = shards / "train-000000.tar"
    cut = tmp_path / "train-000000.tar"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    counter = stages.SkipCounter()
    got = list(wds.DataPipeline(
        wds.SimpleShardList([str(cut)]),
        stages.tarfile_samples_counted(skips=counter, shard_counts={str(cut): 6})))
    assert 0 < len(got) < 6
    assert counter.reasons == {"shard_error": 6 - len(got)}


def test_concatenated_archives_of_a_pipe_are_all_read_by_the_stage(shards):
    a, b = sorted(shards.glob("train-*.tar"))
    counter = stages.SkipCounter()
    got = list(wds.DataPipeline(
        wds.SimpleShardList([f"pipe:cat {a} {b}"]),
        stages.tarfile_samples_counted(skips=counter)))
    assert len(got) == 12 and counter.count == 0


def test_batch_clips_yields_a_full_batch_before_reading_on():
    """wds.batched would read the sample after a full batch first (one more shard)."""
    pulled = []

    def clips():
        for i in range(10):
            pulled.append(i)
            yield {"video": torch.zeros(1), "label": 0, "key": str(i), "meta": {}}

    batches = stages.batch_clips(4)(clips())
    first = next(batches)
    assert first["key"] == ["0", "1", "2", "3"] and pulled == [0, 1, 2, 3]


def test_shard_passes_read_every_shard_once_per_pass():
    urls = [f"s{i}.tar" for i in range(7)]
    passes = stages.shard_passes(urls, seed=5)
    orders = [[d["url"] for d in next(passes)] for _ in range(3)]
    assert all(sorted(o) == urls for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # a fresh order each pass

"""``load_manifest``: the manifest next to the shards, found the same way for every shape of
source (folder, brace pattern, single shard, ``::``, list, ``file://``, HTTP), ``None`` when
there is none, and a ``ValueError`` naming the file for a corrupt one - for the library and
for its callers in ``train`` (class names, class count, split size, the loader)."""

import functools
import http.server
import json
import logging
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from dyreg_pyg.data import ClipLoaderConfig, load_manifest, make_clip_loader
from dyreg_pyg.data import remote as remote_mod
from dyreg_pyg.data.shards import write_manifest
from train.data import read_class_names, read_num_classes, read_split_size
from train.predict import class_names_for

TRAIN = {"num_classes": 3, "num_samples": 8, "class_names": ["a", "b", "c"],
         "shards": [{"name": f"train-{i:06d}.tar", "count": 2} for i in range(4)]}
VAL = {"num_classes": 3, "num_samples": 2, "class_names": ["x", "y", "z"],
       "shards": [{"name": "val-000000.tar", "count": 2}]}


@pytest.fixture
def data(tmp_path):
    """``data/``: 4 train shards, 1 val shard (empty files: nothing here reads them) and their
    manifests."""
    d = tmp_path / "data"
    d.mkdir()
    for i in range(4):
        (d / f"train-{i:06d}.tar").write_bytes(b"")
    (d / "val-000000.tar").write_bytes(b"")
    write_manifest(d / "train-manifest.json", TRAIN)
    write_manifest(d / "val-manifest.json", VAL)
    return d


def _shapes(d):
    """The shapes of source string the callers accept for the training shards of ``d``."""
    return [
        str(d),                                        # a folder (first shard: train-000000)
        f"{d}/",
        f"{d}/train-{{000000..000003}}.tar",           # a brace pattern
        f"{d}/train-000002.tar",                       # a single shard
        f"file://{d}/train-000000.tar",
        f"{d}/train-{{000000..000001}}.tar::{d}/val-000000.tar",  # several patterns
        [f"{d}/train-000000.tar", f"{d}/val-000000.tar"],         # a list
        d / "train-000001.tar",                        # a PathLike
    ]


def test_found_locally_for_every_shape_of_source(data):
    for source in _shapes(data):
        assert load_manifest(source) == TRAIN, source
    assert load_manifest(f"{data}/val-000000.tar") == VAL  # the split's own manifest


def test_callers_find_the_same_manifest(data):
    for source in _shapes(data)[:-2]:  # the train config holds strings
        assert read_num_classes(source) == 3
        assert read_split_size(source) == 8
        assert read_class_names(source, 3) == ["a", "b", "c"]
        cfg = SimpleNamespace(data=SimpleNamespace(val="", train=source))
        assert class_names_for(cfg, 3) == ["a", "b", "c"]
    cfg = SimpleNamespace(data=SimpleNamespace(val=f"{data}/val-000000.tar", train=str(data)))
    assert class_names_for(cfg, 3) == ["x", "y", "z"]  # the validation shards' first


def test_generic_manifest_json_is_the_fallback(tmp_path):
    (tmp_path / "part-000000.tar").write_bytes(b"")
    write_manifest(tmp_path / "manifest.json", {"num_classes": 5})
    assert load_manifest(f"{tmp_path}/part-{{000000..000009}}.tar") == {"num_classes": 5}
    assert load_manifest(tmp_path) == {"num_classes": 5}
    empty = tmp_path / "no_shards"
    empty.mkdir()
    write_manifest(empty / "manifest.json", {"num_classes": 7})
    assert load_manifest(empty) == {"num_classes": 7}  # a folder without .tar shards


@pytest.mark.parametrize("source", ["", None, [], "::", "pipe:cat train-000000.tar",
                                    "s3://bucket/train-000000.tar"])
def test_nothing_to_look_next_to_is_none(source):
    assert load_manifest(source) is None


def test_missing_manifest_is_none(data, tmp_path):
    (data / "train-manifest.json").unlink()
    assert load_manifest(data) is None
    assert load_manifest(f"{data}/train-{{000000..000003}}.tar") is None
    assert load_manifest(tmp_path / "moved" / "train-000000.tar") is None  # shards gone
    assert read_class_names(str(data), 3) is None
    cfg = SimpleNamespace(data=SimpleNamespace(val="", train=str(data)))
    assert class_names_for(cfg, 3) is None
    with pytest.raises(ValueError, match="data.num_classes: not set and no manifest"):
        read_num_classes(str(data))
    with pytest.raises(ValueError, match="data.epoch_size: not set and no manifest"):
        read_split_size(str(data))


CORRUPT = {
    "garbage": (b"\x00\x01 not json at all", "invalid JSON"),
    "truncated": (json.dumps(TRAIN).encode()[:40], "invalid JSON"),
    "empty": (b"", "invalid JSON"),
    "not utf-8": (b'{"num_classes": "\xff\xfe"}', "invalid JSON"),
    "array": (b"[1, 2, 3]", "got a JSON array"),
    "number": (b"3", "got a JSON number"),
    "string": (b'"train"', "got a JSON string"),
    "null": (b"null", "got a JSON null"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_manifest_is_a_value_error_naming_the_file(data, kind):
    body, why = CORRUPT[kind]
    path = data / "train-manifest.json"
    path.write_bytes(body)
    for source in _shapes(data):
        with pytest.raises(ValueError, match="expected a JSON object") as err:
            load_manifest(source)
        assert str(path) in str(err.value) and why in str(err.value)


def test_callers_raise_on_a_corrupt_manifest(data):
    path = data / "train-manifest.json"
    path.write_text('{"num_classes": 3, "class_na')
    cfg = SimpleNamespace(data=SimpleNamespace(val="", train=str(data)))
    for call in (lambda: read_num_classes(str(data)), lambda: read_split_size(str(data)),
                 lambda: read_class_names(str(data), 3), lambda: class_names_for(cfg, 3),
                 lambda: make_clip_loader(str(data), "train", ClipLoaderConfig(
                     num_frames=2, batch_size=1))):
        with pytest.raises(ValueError, match="expected a JSON object") as err:
            call()
        assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------- HTTP
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; anything under ``/error/`` is HTTP 500, under ``/private/`` 403."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/error/"):
            return self.send_error(500)
        if self.path.startswith("/private/"):
            return self.send_error(403)
        return super().do_GET()


@pytest.fixture
def server(data):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Handler, directory=str(data)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(10)


def test_found_over_http(server):
    for source in (f"{server.url}/train-{{000000..000003}}.tar",
                   f"{server.url}/train-000001.tar",
                   f"{server.url}/train-000000.tar?token=abc",
                   [f"{server.url}/train-000000.tar", f"{server.url}/val-000000.tar"]):
        assert load_manifest(source, timeout=5) == TRAIN, source
    assert load_manifest(f"{server.url}/val-000000.tar") == VAL
    pattern = f"{server.url}/train-{{000000..000003}}.tar"
    assert read_num_classes(pattern) == 3 and read_split_size(pattern) == 8
    assert read_class_names(pattern, 3) == ["a", "b", "c"]
    cfg = SimpleNamespace(data=SimpleNamespace(val=pattern, train=""))
    assert class_names_for(cfg, 3) == ["a", "b", "c"]  # predict fetches it too now


def test_missing_over_http_is_none(server, data):
    (data / "train-manifest.json").unlink()
    assert load_manifest(f"{server.url}/train-000000.tar", timeout=5) is None  # 404, 404
    assert load_manifest(f"{server.url}/private/train-000000.tar", timeout=5) is None  # 403
    write_manifest(data / "manifest.json", {"num_classes": 4})
    assert load_manifest(f"{server.url}/train-000000.tar", timeout=5) == {"num_classes": 4}


def test_corrupt_over_http_is_a_value_error_naming_the_url(server, data):
    (data / "train-manifest.json").write_text("[]")
    url = f"{server.url}/train-manifest.json"
    with pytest.raises(ValueError, match=f"manifest {url}: expected a JSON object, got a "
                                         "JSON array"):
        load_manifest(f"{server.url}/train-000000.tar", timeout=5)


def test_server_errors_are_os_errors_naming_the_url(server, monkeypatch, caplog):
    monkeypatch.setattr(remote_mod, "_BACKOFF", 0.01)
    with pytest.raises(OSError, match=r"/error/train-manifest.json: HTTP 500"):
        load_manifest(f"{server.url}/error/train-000000.tar", timeout=5)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/train-000000.tar"
    with pytest.raises(OSError, match="cannot connect"):
        load_manifest(dead, timeout=5)
    # predict's class names are a convenience: an unreachable server is logged, not fatal
    cfg = SimpleNamespace(data=SimpleNamespace(val=dead, train=""))
    with caplog.at_level(logging.WARNING, logger="train"):
        assert class_names_for(cfg, 3) is None
    assert "no class names from the manifest" in caplog.text


def test_bad_brace_pattern_is_a_value_error():
    with pytest.raises(ValueError):
        load_manifest("data/train-{000000..000003.tar")


def test_epoch_length_comes_from_the_manifest_in_the_presets_and_pipe_shards_must_set_it():
    """Issue 36: the SSv2 preset's fixed epoch_size (168913) made an 84,456-step bar on 8
    videos; the presets leave it to the manifest, and pipe: shards (no manifest) are told to
    set it."""
    import yaml

    for path in sorted((Path(__file__).resolve().parents[1] / "train/configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()).get("data") or {}
        assert data.get("epoch_size") is None, f"{path.name}: epoch_size fixed in the preset"
    with pytest.raises(ValueError, match="pipe: shards.*set data.epoch_size"):
        read_split_size("pipe:cat /nonexistent/train-{000000..000001}.tar")

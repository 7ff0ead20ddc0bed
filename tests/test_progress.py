"""Progress bars: drawn on a terminal only (``auto``), or forced on / off; a batch job's log
(SLURM, nohup, a pipe) gets log lines instead of thousands of ``\\r`` redraws."""

import io
import logging

import pytest

from train.config import load_config
from train.export_graphs import _Progress
from train.logs import progress_bar_wanted


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_draws_a_bar_only_on_a_terminal():
    assert progress_bar_wanted("auto", _Tty()) is True
    assert progress_bar_wanted("auto", io.StringIO()) is False      # a file / pipe
    assert progress_bar_wanted("on", io.StringIO()) is True
    assert progress_bar_wanted("off", _Tty()) is False
    assert progress_bar_wanted(False) is False and progress_bar_wanted(True) is True
    with pytest.raises(ValueError, match="progress: expected one of auto, on, off, got 'yes'"):
        progress_bar_wanted("yes")


def test_the_setting_is_a_config_key():
    # YAML reads on / off as booleans; null (the default) is auto
    assert load_config("syncmnist_demo").progress is None
    assert progress_bar_wanted(None, io.StringIO()) is False
    assert load_config("syncmnist_demo", ["progress=off"]).progress is False
    assert load_config("syncmnist_demo", ["progress=on"]).progress is True


def test_without_a_bar_the_export_logs_lines_instead(caplog):
    # pytest's captured stderr is no terminal: "auto" gives log lines, "on" a bar
    assert _Progress(100, 0, "on").bar is not None
    progress = _Progress(100, 0, "auto")
    assert progress.bar is None
    with caplog.at_level(logging.INFO, logger="train"):
        for _ in range(10):
            progress.update(10, skipped=1)
    lines = [r.getMessage() for r in caplog.records if "export-graphs:" in r.getMessage()]
    assert len(lines) == 10 and lines[-1].startswith("export-graphs: 100/100 videos, 1 skipped")

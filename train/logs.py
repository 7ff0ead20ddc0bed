"""Rank-0 training scalars: TensorBoard (when installed), ``metrics.jsonl`` and ``scalars.csv``."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["ScalarLog", "progress_bar_wanted", "PROGRESS_SETTINGS"]

PROGRESS_SETTINGS = ("auto", "on", "off")

log = logging.getLogger("train")


def progress_bar_wanted(setting: str | bool | None = "auto",
                        stream: TextIO | None = None) -> bool:
    """Whether to draw a tqdm bar: ``"on"`` / ``"off"``, or ``"auto"`` - only when the stream
    the bar is written to (stderr, tqdm's default) is a terminal. A batch job's log (SLURM's
    ``slurm-*.out``, ``nohup``, a pipe) is no terminal: there a bar is thousands of ``\\r``
    redraws, and the periodic log lines say the same. ``True`` / ``False`` mean on / off and
    ``None`` auto (the config key ``progress``, where YAML reads ``on`` / ``off`` as booleans)."""
    if isinstance(setting, bool):
        return setting
    if setting is None:
        setting = "auto"
    if setting not in PROGRESS_SETTINGS:
        raise ValueError(f"progress: expected one of {', '.join(PROGRESS_SETTINGS)}, "
                         f"got {setting!r}")
    if setting != "auto":
        return setting == "on"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class ScalarLog:
    """Rank-0 scalars to TensorBoard (when installed) and to a CSV/JSONL file; on other ranks
    (``enabled=False``) every call does nothing."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.jsonl = open(out_dir / "metrics.jsonl", "a")  # noqa: SIM115
        self.csv_path = out_dir / "scalars.csv"
        new = not self.csv_path.exists()
        self.csv = open(self.csv_path, "a", newline="")  # noqa: SIM115
        self.writer = csv.writer(self.csv)
        if new:
            self.writer.writerow(["step", "tag", "value"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception as err:  # tensorboard not installed
            log.info("TensorBoard disabled (%s)", err)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        clean = {k: v for k, v in values.items() if v is not None}
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()
        for k, v in clean.items():
            self.writer.writerow([step, k, v])
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)
        self.csv.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.csv.close()
            if self.tb is not None:
                self.tb.close()

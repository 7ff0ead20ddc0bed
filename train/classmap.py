"""The class map of a checkpoint compared with the data's before anything is scored.

A model's output ``k`` means its training data's class ``k``. Scoring it on shards whose
labels follow another class map (Something-Something V1 labels for a V2 model, 2-class shards
for a 56-class model) gives a number that looks right and is not. ``evaluate`` therefore
compares the checkpoint's classes with the shards' manifest (:func:`check_class_map`):
the class counts must be equal and, when both list names, the names must be the same, in the
same order. Otherwise it stops with one line saying what differs, unless ``--class-map FILE``
says how the data's labels map onto the model's classes (:func:`read_class_map`):

* a JSON list of names: the data's class names, label ``i`` first; each is looked up among
  the checkpoint's class names (the checkpoint must have them);
* a JSON object ``{"<data label>": <checkpoint class>, ...}``.

Samples whose label maps to no class of the model are skipped and counted
(``label_not_in_class_map``), as the loader counts labels outside the class map
(:class:`RemappedLoader`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ModelClasses", "ClassMapError", "checkpoint_classes", "check_class_map",
           "read_class_map", "RemappedLoader", "class_map_for"]

log = logging.getLogger("train")


class ClassMapError(ValueError):
    """The data's class map differs from the model's (or a ``--class-map`` file is bad)."""


@dataclass
class ModelClasses:
    """What a model's outputs mean: ``num_classes``, their ``names`` (``None``: unknown) and
    the dataset they come from (for messages)."""

    num_classes: int
    names: list[str] | None = None
    dataset: str = ""

    def describe(self) -> str:
        return f"{self.num_classes} classes" + (f" ({self.dataset})" if self.dataset else "")


def checkpoint_classes(path: str | Path) -> ModelClasses:
    """The classes of a checkpoint written by ``fit``: ``num_classes``, the ``class_names``
    fit saved (those of its training manifest, when it listed them) and the dataset of its
    config. The weights are memory-mapped, not read."""
    from .checkpoint import load_checkpoint

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint: the ordinary load says what is wrong
        ck = load_checkpoint(path)
    names = ck.get("class_names")
    data = (ck.get("config") or {}).get("data") or {}
    return ModelClasses(int(ck["num_classes"]),
                        [str(n) for n in names] if isinstance(names, list) and names else None,
                        str(ck.get("dataset") or data.get("dataset") or ""))


def _manifest_classes(manifest: dict[str, Any]) -> tuple[int | None, list[str] | None]:
    num = manifest.get("num_classes")
    names = manifest.get("class_names")
    names = [str(n) for n in names] if isinstance(names, list) and names else None
    return (int(num) if isinstance(num, int | float | str) and str(num).isdigit() else None,
            names)


def _shards_text(data: str, manifest: dict[str, Any], count: int) -> str:
    ds = manifest.get("dataset")
    return f"the shards' manifest (next to {data!r}{f', {ds}' if ds else ''}) {count}"


def check_class_map(model: ModelClasses, data: str, manifest: dict[str, Any] | None) -> None:
    """Raise :class:`ClassMapError` (one line) unless the shards' ``manifest`` (next to
    ``data``) has the model's class count and, where both list names, the same names in the
    same order. Nothing to compare (no manifest, or one without a count or names): no error."""
    if not manifest:
        return
    num, names = _manifest_classes(manifest)
    hint = ("; if the labels really are the same classes, --class-map FILE maps the data's "
            "labels onto the model's (docs/RECIPES.md)")
    for count in (num, None if names is None else len(names)):
        if count is not None and count != model.num_classes:
            raise ClassMapError(f"class map: the checkpoint has {model.describe()}, "
                                f"{_shards_text(data, manifest, count)}{hint}")
    if names is None or model.names is None:
        return
    diff = [i for i, (a, b) in enumerate(zip(model.names, names)) if a != b]
    if diff:
        i = diff[0]
        raise ClassMapError(
            f"class map: the checkpoint has {model.describe()}, "
            f"{_shards_text(data, manifest, len(names))} with {len(diff)} names different: "
            f"first index {i} {model.names[i]!r} (checkpoint) vs {names[i]!r} (shards){hint}")


def read_class_map(path: str | Path, model: ModelClasses,
                   manifest: dict[str, Any] | None = None) -> dict[int, int]:
    """``{data label: model class}`` from a ``--class-map`` JSON file (a list of the data's
    class names, or ``{"<data label>": <model class>}``; see the module's docstring).

    Raises:
        ClassMapError: the file is not such JSON, a list is given for a checkpoint without
            class names or has another length than the manifest's class count, or a model
            class is outside ``[0, num_classes)``. The message names the file.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exn:
        raise ClassMapError(f"--class-map: cannot read {path} as JSON: {exn}") from exn
    if isinstance(raw, list):
        mapping = _map_by_names(path, raw, model, manifest)
    elif isinstance(raw, dict):
        mapping = _map_by_index(path, raw, model)
    else:
        raise ClassMapError(f"--class-map: {path}: expected a JSON list of class names or an "
                            f"object {{data label: model class}}, got a {type(raw).__name__}")
    if not mapping:
        raise ClassMapError(f"--class-map: {path} maps no data label onto a class of the model")
    return mapping


def _map_by_names(path: Path, names: list, model: ModelClasses,
                  manifest: dict[str, Any] | None) -> dict[int, int]:
    if model.names is None:
        raise ClassMapError(f"--class-map: {path} lists class names, but the checkpoint has "
                            "none to look them up in: give {\"<data label>\": <model class>} "
                            "instead")
    num, _ = _manifest_classes(manifest or {})
    if num is not None and len(names) != num:
        raise ClassMapError(f"--class-map: {path} lists {len(names)} class names, the shards' "
                            f"manifest has {num} classes")
    index = {n: i for i, n in enumerate(model.names)}
    mapping = {i: index[str(n)] for i, n in enumerate(names) if str(n) in index}
    missing = [str(n) for n in names if str(n) not in index]
    if missing:
        log.warning("--class-map %s: %d of %d names are not classes of the model (first: %r): "
                    "their samples are skipped and counted", path, len(missing), len(names),
                    missing[0])
    return mapping


def _map_by_index(path: Path, raw: dict, model: ModelClasses) -> dict[int, int]:
    mapping = {}
    for k, v in raw.items():
        if not (isinstance(k, str) and k.strip().isdigit()) or isinstance(v, bool) \
                or not isinstance(v, int):
            raise ClassMapError(f"--class-map: {path}: expected {{\"<data label>\": <model "
                                f"class>}} with non-negative integers, got {k!r}: {v!r}")
        if not 0 <= v < model.num_classes:
            raise ClassMapError(f"--class-map: {path}: data label {k} maps to class {v}, the "
                                f"model has classes 0..{model.num_classes - 1}")
        mapping[int(k)] = v
    return mapping


class RemappedLoader:
    """A clip loader whose labels are mapped onto the model's classes (``mapping``: data
    label -> model class; ``None``: unchanged). Samples whose label maps to no class in
    ``[0, num_classes)`` are dropped and counted as ``label_not_in_class_map`` in the wrapped
    loader's ``skips`` / ``epoch_skips``; every other attribute is the wrapped loader's."""

    def __init__(self, loader: Any, num_classes: int,
                 mapping: dict[int, int] | None = None) -> None:
        self.loader = loader
        self.num_classes = num_classes
        self.mapping = mapping

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            batch = self._remap(batch)
            if batch is not None:
                yield batch

    def _remap(self, batch: dict[str, Any]) -> dict[str, Any] | None:
        labels = batch["label"].tolist()
        new = [self.mapping.get(x, -1) if self.mapping is not None else x for x in labels]
        keep = [i for i, x in enumerate(new) if 0 <= x < self.num_classes]
        for i in sorted(set(range(len(new))) - set(keep)):
            detail = (f"label {labels[i]} maps to no class of the model" if self.mapping
                      is not None else f"label {labels[i]} not in [0, {self.num_classes})")
            key = batch["key"][i] if "key" in batch else "?"
            for counter in (self.loader.skips, self.loader.epoch_skips):
                counter.add(str(key), "label_not_in_class_map", detail)
        if not keep:
            return None
        b = len(labels)
        out = {}
        for name, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == b:
                value = value[keep] if len(keep) < b else value
            elif isinstance(value, list) and len(value) == b:
                value = [value[i] for i in keep]
            out[name] = value
        out["label"] = torch.tensor([new[i] for i in keep], dtype=batch["label"].dtype)
        return out


def class_map_for(model: ModelClasses, data: str, class_map: str | None,
                  read_timeout: float | None = None) -> dict[int, int] | None:
    """The data-to-model label map ``evaluate`` scores with: ``None`` (labels unchanged)
    after :func:`check_class_map` found nothing different, or :func:`read_class_map` of
    ``class_map`` (given: the manifest is not compared, the file says how they relate)."""
    from dyreg_pyg.data import load_manifest

    kw = {"timeout": read_timeout} if read_timeout else {}
    manifest = load_manifest(data, **kw)
    if class_map:
        mapping = read_class_map(class_map, model, manifest)
        log.info("--class-map %s: %d data labels mapped onto the model's %s", class_map,
                 len(mapping), model.describe())
        return mapping
    check_class_map(model, data, manifest)
    return None

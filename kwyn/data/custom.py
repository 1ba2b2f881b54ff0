"""Bring your own data: a folder-per-class tree or a CSV becomes a TaskData like a benchmark's.

Folder layout:  root/<split>/<class>/<audio file>       split in train, valid, test
CSV layout:     columns path, split, and either label (one class), labels (";"-separated,
                multi-label; may be empty) or transcript (ASR: the text spoken, kept verbatim;
                its label set is the characters of the train transcripts). Relative paths are
                relative to the CSV's folder.

The label set is what train uses (sorted); a valid/test label that train never shows is an
error, since a model cannot learn it. Unknown split names, an empty split and files that do
not exist are errors that name what is wrong.
"""
from __future__ import annotations

import csv
from pathlib import Path

from kwyn.data.benchmarks import TaskData, check_files
from kwyn.data.nsynth import SPLITS, Example

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".au"}


def _unknown_splits(names, source):
    unknown = sorted(set(names) - set(SPLITS))
    if unknown:
        raise ValueError(f"{source}: unknown split name(s) {unknown}; use {list(SPLITS)}")


def _task(name: str, task: str, splits: dict, kind: str, source) -> TaskData:
    for split in SPLITS:
        if not splits.get(split):
            raise ValueError(f"{source}: split {split!r} is empty")
    check_files([e for split in SPLITS for e in splits[split]], source)  # all missing at once

    def labels_of(e):
        return e.labels[task] if kind in ("multilabel", "text") else [e.labels[task]]  # text: its characters

    label_set = sorted({label for e in splits["train"] for label in labels_of(e)})
    unseen = sorted({(s, label) for s in ("valid", "test") for e in splits[s] for label in labels_of(e)
                     if label not in label_set})
    if unseen:
        raise ValueError(f"{source}: label(s) absent from train, so outside the label set: "
                         + ", ".join(f"{label!r} ({s})" for s, label in unseen))
    return TaskData(name, task, splits, label_set, kind)


def load_folder(root, name: str | None = None) -> TaskData:
    """root/<split>/<class>/*.<audio>: task "label"; files with other suffixes are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    split_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    _unknown_splits([p.name for p in split_dirs], root)
    splits = {s: [] for s in SPLITS}
    for split_dir in split_dirs:
        for path in sorted(split_dir.glob("*/*")):
            if path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith("."):
                splits[split_dir.name].append(Example(path, {"label": path.parent.name}))
    return _task(name or root.name, "label", splits, "label", root)


def load_csv(path, name: str | None = None) -> TaskData:
    """A CSV with path, split and label (single-label), labels (";"-separated, multi-label) or transcript (ASR)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    task = next((t for t in ("transcript", "labels") if t in columns), "label")
    if not {"path", "split", task} <= columns:
        raise ValueError(f"{path}: needs columns path, split and label (or labels, or transcript); "
                         f"has {sorted(columns)}")
    _unknown_splits({r["split"] for r in rows}, path)
    splits = {s: [] for s in SPLITS}
    for line, r in enumerate(rows, start=2):
        value = r[task].strip()
        if task in ("label", "transcript") and not value:
            raise ValueError(f"{path}, line {line}: empty {task}")
        label = [v.strip() for v in value.split(";") if v.strip()] if task == "labels" else value
        splits[r["split"]].append(Example(path.parent / r["path"], {task: label}))
    kind = {"labels": "multilabel", "transcript": "text"}.get(task, "label")
    return _task(name or path.stem, task, splits, kind, path)


def load_custom(path, name: str | None = None) -> TaskData:
    """A folder -> load_folder, a .csv file -> load_csv."""
    path = Path(path)
    return load_csv(path, name) if path.is_file() else load_folder(path, name)

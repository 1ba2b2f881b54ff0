"""Bring your own data: a folder of class folders or a CSV becomes a TaskData like a benchmark's.

Accepted layouts (`kind: custom`, `path:` in params.yaml):
  root/<split>/<class>/<audio file>   split in train, valid, test: the split is yours
  root/<class>/<audio file>           no split level (Hugging Face's audiofolder without split folders):
                                      kwyn draws the split (below); the label is the class folder's name
  root/metadata.csv                   audiofolder's metadata file: read as the CSV below, its paths
                                      relative to root; it takes precedence over the folders around it
  a .csv file                         columns: path (or file_name, audiofolder's name), an optional
                                      split, and either label (one class), labels (";"-separated,
                                      multi-label; may be empty) or transcript (or transcription,
                                      audiofolder's usual name; ASR: the text spoken, kept verbatim;
                                      its label set is the characters of the train transcripts).
                                      Relative paths are relative to the CSV's folder.
A folder is "split" when one of its subfolders is named train, valid or test; any other subfolder
name is then an error (e.g. "val": rename it "valid"). Audio files are those with the suffixes of
AUDIO_SUFFIXES; other files are ignored.

Drawn splits (no split folder, no split column): `split_shares` of the files go to train, valid and
test, shuffled with `split_seed` (params.yaml: split_shares, default 0.8/0.1/0.1, and split_seed).
Single-label data is split per class (stratified), so every class is in every split: each class needs
at least 3 files, and one with fewer is an error naming it. Transcripts (ASR) and multi-label rows
are split by row (utterance), not stratified. The draw depends only on the seed and on which files
carry which label, not on the order of the CSV's rows or of the folder listing: the same data and
seed give the same split. Each class (or, by row, all rows) is sorted by path, shuffled by a
generator seeded with the seed and the class, and cut by the shares, every split getting at least
one file. The prepared CSVs (kwyn.data.prepare) record the split drawn.

The label set is what train uses (sorted); a valid/test label that train never shows is an
error, since a model cannot learn it. Unknown split names, an empty split and files that do
not exist are errors that name what is wrong.
"""
from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from pathlib import Path

from kwyn.data.benchmarks import TaskData, check_files
from kwyn.data.nsynth import SPLITS, Example

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".au"}
SPLIT_SHARES = (0.8, 0.1, 0.1)  # train, valid, test: when the data comes without a split
METADATA_CSV = "metadata.csv"  # Hugging Face audiofolder's metadata file
PATH_COLUMNS = ("path", "file_name")  # the second is audiofolder's
TASK_COLUMNS = {"transcript": "transcript", "transcription": "transcript", "labels": "labels", "label": "label"}


def check_shares(shares) -> tuple[float, float, float]:
    """`shares` as (train, valid, test): three positive numbers summing to 1, or a ValueError saying why."""
    shares = tuple(shares)
    if len(shares) != 3 or any(not s > 0 for s in shares) or not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_shares must be three positive shares (train, valid, test) summing to 1, "
                         f"got {list(shares)}")
    return shares


def _split_sizes(n: int, shares) -> list[int]:
    """n items shared out by `shares`, largest remainder first, every split getting at least one (n >= 3)."""
    ideal = [s * n for s in shares]
    sizes = [math.floor(x) for x in ideal]
    by_remainder = sorted(range(3), key=lambda i: ideal[i] - sizes[i], reverse=True)
    for i in by_remainder[:n - sum(sizes)]:
        sizes[i] += 1
    for i in range(3):
        if sizes[i] == 0:  # taken from the largest split, which has at least 2 when n >= 3
            sizes[i] = 1
            sizes[max(range(3), key=lambda j: sizes[j])] -= 1
    return sizes


def draw_splits(examples: list[Example], task: str, kind: str, shares=SPLIT_SHARES, seed: int = 0,
                source="") -> dict[str, list[Example]]:
    """Share `examples` out into train/valid/test (module doc): per class for single-label data, by row else."""
    shares = check_shares(shares)
    groups = defaultdict(list)
    for e in examples:
        groups[e.labels[task] if kind == "label" else ""].append(e)
    if kind == "label":
        small = {label: len(g) for label, g in sorted(groups.items()) if len(g) < 3}
        if small:
            raise ValueError(f"{source}: to draw train/valid/test with every class in each, a class needs at least "
                             "3 files; too few: " + ", ".join(f"{label!r} ({n})" for label, n in small.items())
                             + ". Add files, drop the class, or give the split yourself")
    elif len(examples) < 3:
        raise ValueError(f"{source}: {len(examples)} row(s); drawing train/valid/test needs at least 3")
    splits = {s: [] for s in SPLITS}
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda e: str(e.path))  # independent of listing and row order
        random.Random(f"{seed}:{key}").shuffle(group)  # a str seed is hashed the same in every process
        start = 0
        for split, size in zip(SPLITS, _split_sizes(len(group), shares)):
            splits[split].extend(group[start:start + size])
            start += size
    return splits


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


def _audio_files(folder: Path) -> list[Path]:
    """folder/<subfolder>/<audio file>, sorted; hidden files and other suffixes are left out."""
    return [p for p in sorted(folder.glob("*/*"))
            if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".") and p.is_file()]


def load_folder(root, name: str | None = None, split_shares=SPLIT_SHARES, split_seed: int = 0) -> TaskData:
    """root/<split>/<class>/*.<audio>, root/<class>/*.<audio> (split drawn) or root/metadata.csv (load_csv):
    task "label" for the folder layouts."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    if (root / METADATA_CSV).is_file():
        return load_csv(root / METADATA_CSV, name or root.name, split_shares, split_seed)
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not any(p.name in SPLITS for p in subdirs):  # class folders only: the split is drawn
        examples = [Example(path, {"label": path.parent.name}) for path in _audio_files(root)]
        if not examples:
            raise ValueError(f"{root}: no audio files in root/<split>/<class>/ or root/<class>/ "
                             f"(suffixes {sorted(AUDIO_SUFFIXES)})")
        splits = draw_splits(examples, "label", "label", split_shares, split_seed, root)
        return _task(name or root.name, "label", splits, "label", root)
    _unknown_splits([p.name for p in subdirs], root)
    splits = {s: [] for s in SPLITS}
    for split_dir in subdirs:
        splits[split_dir.name] = [Example(path, {"label": path.parent.name}) for path in _audio_files(split_dir)]
    return _task(name or root.name, "label", splits, "label", root)


def load_csv(path, name: str | None = None, split_shares=SPLIT_SHARES, split_seed: int = 0) -> TaskData:
    """A CSV with path (or file_name), an optional split, and label (single-label), labels (";"-separated,
    multi-label) or transcript/transcription (ASR). Without a split column the split is drawn (module doc)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    path_column = next((c for c in PATH_COLUMNS if c in columns), None)
    label_column = next((c for c in TASK_COLUMNS if c in columns), None)
    if path_column is None or label_column is None:
        raise ValueError(f"{path}: needs columns path, split and label (or labels, or transcript); path may be "
                         "file_name and transcript transcription (audiofolder's names), and without split the "
                         f"split is drawn by split_shares; has {sorted(columns)}")
    task = TASK_COLUMNS[label_column]
    kind = {"labels": "multilabel", "transcript": "text"}.get(task, "label")
    has_split = "split" in columns
    if has_split:
        _unknown_splits({r["split"] for r in rows}, path)
    examples, split_of = [], []
    for line, r in enumerate(rows, start=2):
        value = r[label_column].strip()
        if task in ("label", "transcript") and not value:
            raise ValueError(f"{path}, line {line}: empty {label_column}")
        label = [v.strip() for v in value.split(";") if v.strip()] if task == "labels" else value
        examples.append(Example(path.parent / r[path_column], {task: label}))
        split_of.append(r["split"] if has_split else None)
    if has_split:
        splits = {s: [e for e, s_e in zip(examples, split_of) if s_e == s] for s in SPLITS}
    else:
        splits = draw_splits(examples, task, kind, split_shares, split_seed, path)
    return _task(name or path.stem, task, splits, kind, path)


def load_custom(path, name: str | None = None, split_shares=SPLIT_SHARES, split_seed: int = 0) -> TaskData:
    """A folder -> load_folder, a .csv file -> load_csv; split_shares and split_seed draw the split of data
    that comes without one."""
    path = Path(path)
    loader = load_csv if path.is_file() else load_folder
    return loader(path, name, split_shares, split_seed)

"""Prepare a split once: decode, resample, crop to a fixed clip, store as one float32 array.

out_dir/<split>.npy  float32 [N, T], memory-mappable, so training never decodes audio again
out_dir/<split>.csv  id, path (relative to the project root when inside it: kwyn.data.prepare.portable_path),
                     then one column per task: an index into meta.json's labels
                     (+ a "length" column, valid samples before padding, when keep_lengths=True)
out_dir/meta.json    sample_rate, clip_seconds, num_samples, tasks {task: [label names]}
                     (+ task_kinds {task: kind} for tasks that are not single-label)

Task kinds: "label" (default: one label name), "multilabel" (a list of label names, stored as
";"-joined indices, e.g. "3;17", read back as a float multi-hot vector) and "text" (a transcript
stored verbatim; its label set is the character vocabulary, read back as character indices).
A text task keeps audio and transcript aligned: a clip longer than the crop is never cut but
left out and listed as "too_long". Clips of any task whose crop is silent (peak below
SILENCE_PEAK) are kept and listed as "silent", so a summary shows them.
"""
from __future__ import annotations

import csv
import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from kwyn.audio import BadAudioError, crop_or_pad, read_audio
from kwyn.data.nsynth import NSYNTH_FAMILIES, SPLITS, Example, read_nsynth_split
from kwyn.io import atomic_path, read_json, tqdm, write_json

TASK_KINDS = ("label", "multilabel", "text")
SILENCE_PEAK = 1e-4  # -80 dBFS: below one step of 8-bit audio, above float rounding noise


def fit_clip(x: torch.Tensor, length: int, offset: int) -> tuple[torch.Tensor, int]:
    """(the clip a model sees of decoded audio x: `length` samples from `offset`, zero-padded at the end;
    the samples of audio after offset, before padding). The one place where a clip is cut: preparation
    and kwyn.inference (a trimmed model's predict) both call it."""
    return crop_or_pad(x, length, offset), max(0, x.shape[-1] - offset)


def _decode(example: Example, sample_rate: int, length: int, offset: int):
    """(clip [length], samples of audio after offset) or the BadAudioError."""
    try:
        clip, available = fit_clip(read_audio(example.path, sample_rate), length, offset)
        return clip.numpy(), available
    except BadAudioError as e:
        return e  # handed back, so the caller decides in example order (deterministic)


def _encode_label(kind: str, value, index: dict):
    """The csv cell for one task's label, or None when it is not in the label set."""
    if kind == "label":
        try:
            return index.get(value)
        except TypeError:  # unhashable, e.g. a list given to a single-label task
            return None
    if kind == "multilabel":
        if not isinstance(value, (list, tuple, set, frozenset)) or any(v not in index for v in value):
            return None
        return ";".join(str(i) for i in sorted({index[v] for v in value}))
    return value if isinstance(value, str) and all(c in index for c in value) else None


def portable_path(path, out_dir) -> str:
    """`path` as the prepared CSV records it: relative to the project root (the folder above out_dir holding
    params.yaml and dvc.yaml) when it lies inside, so that every clone writes byte-identical files for
    identical audio and DVC's hashes do not depend on where the clone lives; absolute otherwise."""
    from kwyn.params import project_root

    path = Path(path).resolve()
    try:
        return path.relative_to(project_root(out_dir)).as_posix()
    except (FileNotFoundError, ValueError):  # no project above out_dir, or a file outside it
        return str(path)


def prepare_split(examples: list[Example], out_dir, split: str, *, sample_rate: int, clip_seconds: float,
                  offset_seconds: float = 0.0, label_fields: dict[str, list], on_bad_audio: str = "error",
                  workers: int = 1, task_kinds: dict[str, str] | None = None, keep_lengths: bool = False) -> dict:
    """Write out_dir/<split>.npy and .csv; return {"split", "written", "skipped": [paths], "skip_reasons",
    "silent": [paths], "too_long": [paths]}.

    on_bad_audio="error" stops at the first bad file (or label outside its label set);
    "skip" leaves it out and lists it. Outputs appear only when the whole split succeeded.
    task_kinds maps a task to "multilabel" or "text" (default "label", see the module doc).
    """
    if on_bad_audio not in ("error", "skip"):
        raise ValueError(f"on_bad_audio must be 'error' or 'skip', got {on_bad_audio!r}")
    kinds = {t: (task_kinds or {}).get(t, "label") for t in label_fields}
    if unknown := {k for k in kinds.values() if k not in TASK_KINDS}:
        raise ValueError(f"unknown task kind(s) {sorted(unknown)}; known: {TASK_KINDS}")
    has_text = "text" in kinds.values()
    if not examples:
        raise ValueError(f"split {split!r} has no examples")
    out_dir = Path(out_dir)
    length, offset = round(clip_seconds * sample_rate), round(offset_seconds * sample_rate)
    index = {task: {label: i for i, label in enumerate(labels)} for task, labels in label_fields.items()}
    skip_reasons: dict[str, str] = {}
    silent, too_long = [], []

    # labels first: cheap, and a wrong label set should fail before minutes of decoding
    labelled = []
    for ex in examples:
        cells = {t: _encode_label(kinds[t], ex.labels.get(t), index[t]) for t in label_fields}
        bad = [(t, ex.labels.get(t)) for t, cell in cells.items() if cell is None]
        if not bad:
            labelled.append((ex, list(cells.values())))
            continue
        reason = "; ".join(f"label {v!r} for task {t!r} is not in its label set" for t, v in bad)
        if on_bad_audio == "error":
            raise ValueError(f"{ex.path}: {reason}")
        skip_reasons[str(ex.path)] = reason

    rows = []
    with atomic_path(out_dir / f"{split}.npy") as npy_tmp, atomic_path(out_dir / f"{split}.csv") as csv_tmp:
        # rows land in a full-size array as they come; compacted below only if some were skipped
        full_path = npy_tmp.parent / "full.npy"
        full = np.lib.format.open_memmap(full_path, mode="w+", dtype=np.float32,
                                         shape=(max(len(labelled), 1), length))
        with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(labelled), desc=f"prepare {split}",
                                                               unit="clip") as bar:
            # chunks bound how many decoded clips wait in memory; map keeps example order
            it = iter(labelled)
            while chunk := list(itertools.islice(it, 64 * max(1, workers))):
                clips = pool.map(lambda item: _decode(item[0], sample_rate, length, offset), chunk)
                for (ex, label_ids), clip in zip(chunk, clips):
                    bar.update()
                    if isinstance(clip, BadAudioError):
                        if on_bad_audio == "error":
                            raise clip
                        skip_reasons[clip.path] = clip.reason
                        continue
                    clip, available = clip
                    if has_text and available > length:
                        too_long.append(str(ex.path))
                        continue
                    if np.abs(clip).max(initial=0.0) < SILENCE_PEAK:
                        silent.append(str(ex.path))
                    full[len(rows)] = clip
                    rows.append([ex.id, portable_path(ex.path, out_dir), *label_ids] + ([min(available, length)] if keep_lengths else []))
        if not rows:
            example = next(iter(skip_reasons.items()), None) or (too_long[0], "longer than the clip")
            raise ValueError(f"split {split!r}: all {len(examples)} examples were skipped (e.g. {example})")
        full.flush()
        if len(rows) == full.shape[0]:
            del full
            full_path.replace(npy_tmp)
        else:
            kept = np.lib.format.open_memmap(npy_tmp, mode="w+", dtype=np.float32, shape=(len(rows), length))
            for i in range(0, len(rows), 1024):
                kept[i:i + 1024] = full[i:min(i + 1024, len(rows))]
            kept.flush()
            del kept, full
        with open(csv_tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "path", *label_fields] + (["length"] if keep_lengths else []))
            w.writerows(rows)
    return {"split": split, "written": len(rows), "skipped": list(skip_reasons), "skip_reasons": skip_reasons,
            "silent": silent, "too_long": too_long}


def write_meta(out_dir, *, sample_rate: int, clip_seconds: float, tasks: dict[str, list],
               task_kinds: dict[str, str] | None = None) -> Path:
    path = Path(out_dir) / "meta.json"
    meta = {"sample_rate": sample_rate, "clip_seconds": clip_seconds,
            "num_samples": round(clip_seconds * sample_rate), "tasks": tasks}
    # only non-default kinds are written, so single-label meta.json files stay as they were
    kinds = {t: k for t, k in (task_kinds or {}).items() if k != "label"}
    if kinds:
        meta["task_kinds"] = kinds
    write_json(path, meta)
    return path


class PreparedDataset(torch.utils.data.Dataset):
    """(audio float32 [T], label) pairs of one task from a prepared split.

    label: an int ("label" tasks), a float32 multi-hot tensor [num_classes] ("multilabel"),
    or a long tensor of character indices ("text"; self.texts holds the transcripts).
    self.lengths: valid samples per clip when the split was prepared with keep_lengths, else None.
    """

    def __init__(self, root, split: str, task: str):
        self.root, self.split, self.task = Path(root), split, task
        meta = read_json(self.root / "meta.json")
        if task not in meta["tasks"]:
            raise KeyError(f"task {task!r} not in {self.root / 'meta.json'}; known: {sorted(meta['tasks'])}")
        self.classes = list(meta["tasks"][task])
        self.num_classes = len(self.classes)
        self.sample_rate, self.clip_seconds = meta["sample_rate"], meta["clip_seconds"]
        self.kind = meta.get("task_kinds", {}).get(task, "label")
        with open(self.root / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        self.ids = [r["id"] for r in rows]
        cells = [r[task] for r in rows]
        if self.kind == "label":
            self.labels = torch.tensor([int(c) for c in cells], dtype=torch.long)
        elif self.kind == "multilabel":
            self.labels = torch.zeros(len(cells), self.num_classes)
            for i, c in enumerate(cells):
                self.labels[i, [int(j) for j in c.split(";") if j]] = 1.0
        else:
            self.texts = cells
            char_index = {ch: i for i, ch in enumerate(self.classes)}
            self.labels = [torch.tensor([char_index[ch] for ch in c], dtype=torch.long) for c in cells]
        self.lengths = torch.tensor([int(r["length"]) for r in rows]) if rows and "length" in rows[0] else None
        self._audio = None
        if len(self) != self.audio.shape[0]:
            raise ValueError(f"{self.root}/{split}.csv has {len(self)} rows but {split}.npy has "
                             f"{self.audio.shape[0]}: re-run the prepare step")

    @property
    def audio(self) -> np.ndarray:
        # opened lazily so a DataLoader worker maps the file itself instead of receiving a copy
        if self._audio is None:
            self._audio = np.load(self.root / f"{self.split}.npy", mmap_mode="r")
        return self._audio

    def __getstate__(self):
        return {**self.__dict__, "_audio": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        label = int(self.labels[i]) if self.kind == "label" else self.labels[i]
        return torch.from_numpy(np.array(self.audio[i])), label


def prepare_nsynth_like(raw_root, out_dir, *, sample_rate: int = 16000, clip_seconds: float = 1.0,
                        offset_seconds: float = 0.0, pitches: tuple[int, int] = (48, 84),
                        on_bad_audio: str = "error", workers: int = 1) -> dict:
    """Prepare NSynth (real or rendered) train/valid/test for the pitch and instrument_family tasks.

    Notes outside the inclusive `pitches` range are left out before preparing (real NSynth
    spans MIDI 9-120); their count is reported as "out_of_range".
    """
    tasks = {"pitch": list(range(pitches[0], pitches[1] + 1)), "instrument_family": list(NSYNTH_FAMILIES)}
    summary = {}
    for split in SPLITS:
        examples = read_nsynth_split(raw_root, split)
        in_range = [e for e in examples if pitches[0] <= e.labels["pitch"] <= pitches[1]]
        summary[split] = prepare_split(in_range, out_dir, split, sample_rate=sample_rate, clip_seconds=clip_seconds,
                                       offset_seconds=offset_seconds, label_fields=tasks,
                                       on_bad_audio=on_bad_audio, workers=workers)
        summary[split]["out_of_range"] = len(examples) - len(in_range)
    write_meta(out_dir, sample_rate=sample_rate, clip_seconds=clip_seconds, tasks=tasks)
    return summary

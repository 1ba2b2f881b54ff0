"""The paper's nine benchmarks, each read from its own on-disk layout with its OFFICIAL split.

A loader takes the folder where the dataset lies (it never downloads; see kwyn.data.download)
and returns a TaskData: Example lists for "train", "valid", "test" with labels as names, the
ordered label set, and the task kind for prepare_split ("label", "multilabel" or "text").
Every audio file named by the metadata must exist: the error lists the missing ones.

Choices where the dataset defines no validation split (documented in each loader):
ESC-50 and UrbanSound8K use the fold after the test fold (5 -> 1); cross_validation() gives
every fold. LibriSpeech utterances vary in length: prepare_task stores them zero-padded to
clip_seconds with a "length" column, and leaves out (and lists) utterances longer than the
clip, since cutting audio would misalign it with its transcript. Disk use is
N x clip_seconds x sample_rate x 4 bytes, so pick clip_seconds with that in mind.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kwyn.data.nsynth import SPLITS, Example, read_nsynth_split
from kwyn.data.prepare import prepare_split, write_meta


@dataclass
class TaskData:
    name: str
    task: str                       # label key in each Example.labels, and the task name in meta.json
    splits: dict[str, list[Example]]
    labels: list                    # ordered label set (the character vocabulary for "text")
    kind: str = "label"             # "label" | "multilabel" | "text"


def check_files(examples: list[Example], source) -> list[Example]:
    missing = [str(e.path) for e in examples if not e.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} audio file(s) listed in {source} are missing:\n  "
                                + "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else ""))
    return examples


def _need(path: Path, dataset: str, hint: str = "") -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: {path} not found. {hint}".strip())
    return path


def _read_csv(path: Path, dataset: str, **kwargs) -> list[dict]:
    with open(_need(path, dataset), newline="") as f:
        return list(csv.DictReader(f, **kwargs))


def _task(name, task, splits, labels, source, kind="label") -> TaskData:
    for split in SPLITS:
        if not splits.get(split):
            raise ValueError(f"{name}: split {split!r} is empty (read from {source})")
    check_files([e for split in SPLITS for e in splits[split]], source)  # all missing at once
    return TaskData(name, task, splits, labels, kind)


def _ordered_classes(rows, id_col: str, name_col: str, source) -> list[str]:
    """Class names ordered by the dataset's own class index; an index naming two classes is an error."""
    names = {}
    for r in rows:
        if names.setdefault(int(r[id_col]), r[name_col]) != r[name_col]:
            raise ValueError(f"{source}: {id_col} {r[id_col]} names both {names[int(r[id_col])]!r} "
                             f"and {r[name_col]!r}")
    return [names[i] for i in sorted(names)]


def _fold_splits(fold: int, n_folds: int):
    """test = `fold`, valid = the next fold (wrapping), train = the rest: the official folds, never reshuffled."""
    if fold not in range(1, n_folds + 1):
        raise ValueError(f"fold must be 1..{n_folds}, got {fold}")
    valid = fold % n_folds + 1
    return lambda f: "test" if f == fold else "valid" if f == valid else "train"


def load_esc50(root, fold: int = 1) -> TaskData:
    """ESC-50 (root/meta/esc50.csv, root/audio/*.wav): 50 categories, 5 folds; `fold` is the test fold."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    rows = _read_csv(meta, "ESC-50")
    split_of = _fold_splits(fold, 5)
    splits = {s: [] for s in SPLITS}
    for r in rows:
        splits[split_of(int(r["fold"]))].append(
            Example(root / "audio" / r["filename"], {"category": r["category"], "fold": int(r["fold"])}))
    return _task("esc50", "category", splits, _ordered_classes(rows, "target", "category", meta), meta)


def load_urbansound8k(root, fold: int = 1) -> TaskData:
    """UrbanSound8K (root/metadata/UrbanSound8K.csv, root/audio/fold<k>/): 10 classes, 10 folds."""
    root = Path(root)
    meta = root / "metadata" / "UrbanSound8K.csv"
    rows = _read_csv(meta, "UrbanSound8K")
    split_of = _fold_splits(fold, 10)
    splits = {s: [] for s in SPLITS}
    for r in rows:
        k = int(r["fold"])
        splits[split_of(k)].append(
            Example(root / "audio" / f"fold{k}" / r["slice_file_name"], {"class": r["class"], "fold": k}))
    return _task("urbansound8k", "class", splits, _ordered_classes(rows, "classID", "class", meta), meta)


def cross_validation(dataset: str, root) -> list[TaskData]:
    """One TaskData per official fold (fold k as test), for ESC-50 (5) and UrbanSound8K (10)."""
    loader, n_folds = {"esc50": (load_esc50, 5), "urbansound8k": (load_urbansound8k, 10)}[dataset]
    return [loader(root, fold=k) for k in range(1, n_folds + 1)]


def load_fsd50k(root) -> TaskData:
    """FSD50K: dev.csv's train/val -> train/valid, eval.csv -> test; 200 labels (vocabulary.csv), multi-label."""
    root = Path(root)
    gt = root / "FSD50K.ground_truth"
    with open(_need(gt / "vocabulary.csv", "FSD50K"), newline="") as f:
        vocabulary = [row[1] for row in sorted(csv.reader(f), key=lambda row: int(row[0]))]  # no header
    splits = {s: [] for s in SPLITS}
    for r in _read_csv(gt / "dev.csv", "FSD50K"):
        split = {"train": "train", "val": "valid"}[r["split"]]
        splits[split].append(Example(root / "FSD50K.dev_audio" / f"{r['fname']}.wav",
                                     {"labels": r["labels"].split(",")}))
    for r in _read_csv(gt / "eval.csv", "FSD50K"):
        splits["test"].append(Example(root / "FSD50K.eval_audio" / f"{r['fname']}.wav",
                                      {"labels": r["labels"].split(",")}))
    return _task("fsd50k", "labels", splits, vocabulary, gt, kind="multilabel")


GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def gtzan_split_lists(root) -> dict[str, list[str]]:
    """The fault-filtered split (Kereliuk & Sturm): root/<split>_filtered.txt, lines like
    "blues/blues.00029.wav" (or .au). Without the files, torchaudio's copy of the same lists is used."""
    root = Path(root)
    lists = {}
    for split in SPLITS:
        path = root / f"{split}_filtered.txt"
        if path.is_file():
            lists[split] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            from torchaudio.datasets import gtzan  # same 443/197/290 split, as "blues.00029"
            ids = getattr(gtzan, f"filtered_{split}")
            lists[split] = [f"{i.split('.')[0]}/{i}.wav" for i in ids]
    return lists


def load_gtzan(root) -> TaskData:
    """GTZAN (root/genres/<genre>/<genre>.000NN.wav or .au) with the fault-filtered split."""
    root = Path(root)
    splits = {}
    for split, names in gtzan_split_lists(root).items():
        examples = []
        for name in names:
            path = root / "genres" / name
            if not path.is_file():  # lists and archives disagree on .au vs .wav: take what is there
                path = next((p for p in (path.with_suffix(".wav"), path.with_suffix(".au")) if p.is_file()), path)
            examples.append(Example(path, {"genre": name.split("/")[0]}))
        splits[split] = examples
    return _task("gtzan", "genre", splits, list(GTZAN_GENRES), root / "genres")


MTT_SPLIT_BY_FOLDER = {**{c: "train" for c in "0123456789ab"}, "c": "valid", "d": "test", "e": "test", "f": "test"}


def load_magnatagatune(root, top: int = 50, audio_dir=None, drop_untagged: bool = True) -> TaskData:
    """MagnaTagATune: the `top` most frequent of 188 tags (over all clips; ties in column order),
    folders 0-b train, c valid, d-f test (first character of mp3_path). Clips with none of the kept
    tags are dropped (drop_untagged), as in the usual top-50 setup. Audio is mp3: soundfile reads it
    with libsndfile >= 1.1. audio_dir: where the 0..f folders are (default root).
    """
    root = Path(root)
    meta = root / "annotations_final.csv"
    rows = _read_csv(meta, "MagnaTagATune", delimiter="\t")
    all_tags = [c for c in rows[0] if c not in ("clip_id", "mp3_path")] if rows else []
    counts = Counter({t: sum(r[t] == "1" for r in rows) for t in all_tags})
    tags = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], all_tags.index(kv[0])))[:top]]
    audio_dir = Path(audio_dir) if audio_dir else root
    splits = {s: [] for s in SPLITS}
    for r in rows:
        clip_tags = [t for t in tags if r[t] == "1"]
        if clip_tags or not drop_untagged:
            splits[MTT_SPLIT_BY_FOLDER[r["mp3_path"][0]]].append(
                Example(audio_dir / r["mp3_path"], {"tags": clip_tags, "clip_id": r["clip_id"]}))
    return _task("magnatagatune", "tags", splits, tags, meta, kind="multilabel")


def load_nsynth(root, pitches: tuple[int, int] = (9, 120)) -> TaskData:
    """NSynth pitch (official train/valid/test); notes outside the inclusive MIDI range are left out."""
    splits = {s: [e for e in read_nsynth_split(root, s) if pitches[0] <= e.labels["pitch"] <= pitches[1]]
              for s in SPLITS}
    return _task("nsynth", "pitch", splits, list(range(pitches[0], pitches[1] + 1)), Path(root))


def load_speech_commands(root) -> TaskData:
    """Speech Commands v2: class folders (35 words; _background_noise_ excluded), the official
    validation_list.txt and testing_list.txt; every other file is train."""
    root = Path(root)
    listed = {}
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        for line in _need(root / name, "Speech Commands").read_text().split():
            listed[line] = split
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    splits = {s: [] for s in SPLITS}
    for word in words:
        for path in sorted((root / word).glob("*.wav")):
            splits[listed.pop(f"{word}/{path.name}", "train")].append(Example(path, {"word": word}))
    # lines left over name files that are not on disk
    check_files([Example(root / line) for line in listed], "validation_list.txt/testing_list.txt")
    return _task("speech_commands", "word", splits, words, root)


FSC_MANUAL = ("Fluent Speech Commands is licensed per user and cannot be downloaded by kwyn: request it at "
              "https://fluent.ai/fluent-speech-commands-a-dataset-for-spoken-language-understanding-research/ "
              "and unpack it so that ROOT/data/{train,valid,test}_data.csv and ROOT/wavs/speakers/ exist "
              "(ROOT may also be the folder holding fluent_speech_commands_dataset/).")


def load_fluent_speech_commands(root) -> TaskData:
    """Fluent Speech Commands: official data/{train,valid,test}_data.csv; intent = action/object/location.
    The label set is the intents of train, so an intent seen only in valid/test fails in prepare."""
    root = Path(root)
    if not (root / "data").is_dir() and (root / "fluent_speech_commands_dataset").is_dir():
        root = root / "fluent_speech_commands_dataset"
    splits = {}
    for split in SPLITS:
        rows = _read_csv(_need(root / "data" / f"{split}_data.csv", "Fluent Speech Commands", FSC_MANUAL),
                         "Fluent Speech Commands")
        splits[split] = [Example(root / r["path"], {"intent": f"{r['action']}/{r['object']}/{r['location']}",
                                                    "speaker": r["speakerId"]}) for r in rows]
    intents = sorted({e.labels["intent"] for e in splits["train"]})
    return _task("fluent_speech_commands", "intent", splits, intents, root / "data")


LIBRISPEECH_VOCAB = list(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # every character of its transcripts; CTC blank is the head's
LIBRISPEECH_SUBSETS = {"train": "train-clean-100", "valid": "dev-clean", "test": "test-clean"}


def load_librispeech(root, subsets: dict[str, str] = LIBRISPEECH_SUBSETS) -> TaskData:
    """LibriSpeech: <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + .flac; label = transcript.
    root may be the folder holding the subsets or the one holding LibriSpeech/."""
    root = Path(root)
    if (root / "LibriSpeech").is_dir():
        root = root / "LibriSpeech"
    splits = {}
    for split, subset in subsets.items():
        examples = []
        for trans in sorted(_need(root / subset, "LibriSpeech").glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                if line.strip():
                    utt, text = line.split(" ", 1)
                    examples.append(Example(trans.parent / f"{utt}.flac", {"transcript": text.strip()}))
        splits[split] = examples
    return _task("librispeech", "transcript", splits, list(LIBRISPEECH_VOCAB), root, kind="text")


BENCHMARKS = {"esc50": load_esc50, "urbansound8k": load_urbansound8k, "fsd50k": load_fsd50k,
              "gtzan": load_gtzan, "magnatagatune": load_magnatagatune, "nsynth": load_nsynth,
              "speech_commands": load_speech_commands, "fluent_speech_commands": load_fluent_speech_commands,
              "librispeech": load_librispeech}


def load_benchmark(name: str, root, **kwargs) -> TaskData:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name](root, **kwargs)


def prepare_task(data: TaskData, out_dir, *, sample_rate: int, clip_seconds: float, offset_seconds: float = 0.0,
                 on_bad_audio: str = "error", workers: int = 1, keep_lengths: bool | None = None) -> dict:
    """prepare_split for each split of `data`, then meta.json; returns {split: summary}.
    keep_lengths defaults to True for text tasks (ASR needs the unpadded length)."""
    keep = data.kind == "text" if keep_lengths is None else keep_lengths
    summary = {}
    for split in SPLITS:
        summary[split] = prepare_split(data.splits[split], out_dir, split, sample_rate=sample_rate,
                                       clip_seconds=clip_seconds, offset_seconds=offset_seconds,
                                       label_fields={data.task: data.labels}, on_bad_audio=on_bad_audio,
                                       workers=workers, task_kinds={data.task: data.kind}, keep_lengths=keep)
    write_meta(out_dir, sample_rate=sample_rate, clip_seconds=clip_seconds, tasks={data.task: data.labels},
               task_kinds={data.task: data.kind})
    return summary

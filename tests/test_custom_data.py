"""Bring your own data: folder-per-class and CSV layouts, and the errors users will meet."""
import csv

import numpy as np
import pytest
import soundfile as sf

from kwyn.data.benchmarks import prepare_task
from kwyn.data.custom import load_csv, load_custom, load_folder
from kwyn.data.prepare import PreparedDataset

SR = 8000


def wav(path, seconds=0.1, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * np.arange(round(seconds * SR)) / SR), SR)
    return path


def make_folder(root, splits=("train", "valid", "test")):
    for split in splits:
        for cls in ("cat", "dog"):
            for i in range(2):
                wav(root / split / cls / f"{cls}{i}.wav", freq=300 if cls == "cat" else 600)
    (root / "train" / "cat" / "notes.txt").write_text("ignored: not audio\n")
    return root


def write_rows(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_folder_per_class(tmp_path):
    data = load_folder(make_folder(tmp_path / "pets"))
    assert data.name == "pets" and data.labels == ["cat", "dog"] and data.kind == "label"
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 4, "valid": 4, "test": 4}
    assert all(e.labels["label"] == e.path.parent.name for v in data.splits.values() for e in v)
    prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1)
    ds = PreparedDataset(tmp_path / "prep", "test", "label")
    assert [ds.classes[i] for i in ds.labels] == ["cat", "cat", "dog", "dog"]


def test_csv_single_label(tmp_path):
    for i, split in enumerate(["train", "train", "valid", "test"]):
        wav(tmp_path / "clips" / f"c{i}.wav")
    path = write_rows(tmp_path / "my_task.csv", ["path", "label", "split"],
                      [["clips/c0.wav", "a", "train"], ["clips/c1.wav", "b", "train"],
                       [str(tmp_path / "clips" / "c2.wav"), "b", "valid"], ["clips/c3.wav", "a", "test"]])
    data = load_custom(path)
    assert data.name == "my_task" and data.task == "label" and data.labels == ["a", "b"]
    assert data.splits["train"][0].path == tmp_path / "clips" / "c0.wav"  # relative to the CSV
    assert data.splits["valid"][0].path == tmp_path / "clips" / "c2.wav"  # absolute kept


def test_csv_multi_label(tmp_path):
    for i in range(3):
        wav(tmp_path / f"{i}.wav")
    path = write_rows(tmp_path / "tags.csv", ["path", "labels", "split"],
                      [["0.wav", "rock; guitar", "train"], ["1.wav", "", "valid"], ["2.wav", "guitar", "test"]])
    data = load_csv(path)
    assert data.kind == "multilabel" and data.labels == ["guitar", "rock"]
    assert data.splits["train"][0].labels["labels"] == ["rock", "guitar"]
    assert data.splits["valid"][0].labels["labels"] == []  # no tag is a valid multi-label target
    prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1)
    assert PreparedDataset(tmp_path / "prep", "train", "labels")[0][1].tolist() == [1.0, 1.0]
    assert PreparedDataset(tmp_path / "prep", "valid", "labels")[0][1].tolist() == [0.0, 0.0]


def test_unknown_split_names(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "val").mkdir()
    with pytest.raises(ValueError, match=r"unknown split name\(s\) \['val'\]"):
        load_folder(root)
    wav(tmp_path / "x.wav")
    path = write_rows(tmp_path / "t.csv", ["path", "label", "split"],
                      [["x.wav", "a", "train"], ["x.wav", "a", "dev"], ["x.wav", "a", "test"]])
    with pytest.raises(ValueError, match=r"\['dev'\].*train.*valid.*test"):
        load_csv(path)


def test_empty_split_is_named(tmp_path):
    with pytest.raises(ValueError, match="split 'valid' is empty"):
        load_folder(make_folder(tmp_path / "f", splits=("train", "test")))
    wav(tmp_path / "x.wav")
    path = write_rows(tmp_path / "t.csv", ["path", "label", "split"],
                      [["x.wav", "a", "train"], ["x.wav", "a", "valid"]])
    with pytest.raises(ValueError, match="split 'test' is empty"):
        load_csv(path)


def test_missing_files_are_listed(tmp_path):
    wav(tmp_path / "x.wav")
    path = write_rows(tmp_path / "t.csv", ["path", "label", "split"],
                      [["x.wav", "a", "train"], ["gone1.wav", "a", "train"], ["x.wav", "a", "valid"],
                       ["sub/gone2.wav", "a", "test"]])
    with pytest.raises(FileNotFoundError, match="2 audio file") as err:
        load_csv(path)
    assert str(tmp_path / "gone1.wav") in str(err.value) and str(tmp_path / "sub" / "gone2.wav") in str(err.value)


def test_labels_absent_from_train(tmp_path):
    root = make_folder(tmp_path / "f")
    wav(root / "test" / "bird" / "b0.wav")
    with pytest.raises(ValueError, match="'bird' \\(test\\)"):
        load_folder(root)


def test_csv_column_and_label_errors(tmp_path):
    wav(tmp_path / "x.wav")
    with pytest.raises(ValueError, match="needs columns path, split and label"):
        load_csv(write_rows(tmp_path / "a.csv", ["file", "label", "split"], [["x.wav", "a", "train"]]))
    with pytest.raises(ValueError, match="line 3: empty label"):
        load_csv(write_rows(tmp_path / "b.csv", ["path", "label", "split"],
                            [["x.wav", "a", "train"], ["x.wav", " ", "test"]]))

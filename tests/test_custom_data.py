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


# -- data without a split: the split is drawn (deterministic, per class) ------------------------------------

def make_class_folders(root, counts):
    for cls, n in counts.items():
        for i in range(n):
            wav(root / cls / f"{cls}{i}.wav")
    return root


def split_of(data):
    return {s: sorted(str(e.path) for e in v) for s, v in data.splits.items()}


def test_class_folders_without_split_are_split_per_class_and_deterministically(tmp_path):
    root = make_class_folders(tmp_path / "pets", {"cat": 10, "dog": 20, "bird": 3})
    data = load_folder(root)
    assert data.name == "pets" and data.labels == ["bird", "cat", "dog"] and data.kind == "label"
    counts = {s: {c: sum(e.labels["label"] == c for e in v) for c in data.labels} for s, v in data.splits.items()}
    assert counts == {"train": {"bird": 1, "cat": 8, "dog": 16}, "valid": {"bird": 1, "cat": 1, "dog": 2},
                      "test": {"bird": 1, "cat": 1, "dog": 2}}  # 0.8/0.1/0.1 of each class, every class everywhere
    assert all(e.labels["label"] == e.path.parent.name for v in data.splits.values() for e in v)
    assert split_of(load_folder(root)) == split_of(data)  # same seed, same split
    other = split_of(load_folder(root, split_seed=1))
    assert other != split_of(data) and sorted(sum(other.values(), [])) == sorted(sum(split_of(data).values(), []))
    shares = load_folder(root, split_shares=(0.4, 0.3, 0.3))
    assert [len(shares.splits[s]) for s in ("train", "valid", "test")] == [1 + 4 + 8, 1 + 3 + 6, 1 + 3 + 6]


def test_a_drawn_split_depends_on_the_files_not_on_their_order(tmp_path):
    root = make_class_folders(tmp_path / "f", {"a": 7, "b": 5})
    rows = [[str(p.relative_to(root)), p.parent.name] for p in sorted(root.glob("*/*.wav"))]
    forward = load_csv(write_rows(tmp_path / "f1.csv", ["path", "label"], [["f/" + p, c] for p, c in rows]))
    backward = load_csv(write_rows(tmp_path / "f2.csv", ["path", "label"], [["f/" + p, c] for p, c in rows[::-1]]))
    assert split_of(forward) == split_of(backward) == split_of(load_folder(root))


def test_a_class_too_small_to_be_in_every_split_is_named(tmp_path):
    root = make_class_folders(tmp_path / "f", {"cat": 5, "dog": 2, "eel": 1})
    with pytest.raises(ValueError, match=r"at least 3 files; too few: 'dog' \(2\), 'eel' \(1\)"):
        load_folder(root)


def test_split_shares_must_be_three_positive_shares_summing_to_one(tmp_path):
    root = make_class_folders(tmp_path / "f", {"cat": 5})
    for bad in [(0.8, 0.2, 0.0), (0.5, 0.3, 0.3), (0.9, 0.1)]:
        with pytest.raises(ValueError, match="three positive shares"):
            load_folder(root, split_shares=bad)


def test_csv_without_split_column_and_audiofolder_metadata(tmp_path):
    for i in range(6):
        wav(tmp_path / "data" / f"{i}.wav")
    rows = [[f"{i}.wav", "ab"[i % 2]] for i in range(6)]
    data = load_custom(write_rows(tmp_path / "data" / "metadata.csv", ["file_name", "label"], rows).parent)
    assert data.name == "data" and data.task == "label"  # audiofolder: root/metadata.csv, file_name
    assert {s: sorted(e.labels["label"] for e in v) for s, v in data.splits.items()} == \
        {"train": ["a", "b"], "valid": ["a", "b"], "test": ["a", "b"]}
    assert data.splits["train"][0].path.parent == tmp_path / "data"  # relative to the metadata file
    # transcripts (audiofolder's "transcription") are split by utterance, not by text
    texts = ["go on", "no go", "on no", "go no", "no on", "on go"]  # each character in >= 3 of 6: some in train's 4
    asr = load_csv(write_rows(tmp_path / "data" / "speech.csv", ["file_name", "transcription"],
                              [[f"{i}.wav", t] for i, t in enumerate(texts)]))
    assert asr.task == "transcript" and asr.kind == "text"
    assert [len(asr.splits[s]) for s in ("train", "valid", "test")] == [4, 1, 1]
    assert sorted(e.labels["transcript"] for v in asr.splits.values() for e in v) == sorted(texts)
    assert asr.labels == sorted(set("".join(e.labels["transcript"] for e in asr.splits["train"])))


def test_pipeline_prepares_class_folders_with_the_params_split(tmp_path, monkeypatch):
    import yaml
    from conftest import tiny_params

    from kwyn import pipeline
    from kwyn.params import ParamsError, load_params

    make_class_folders(tmp_path / "mine", {"cat": 4, "dog": 4})
    raw = tiny_params()
    raw["datasets"] = {"pets": {"kind": "custom", "path": "mine", "sample_rate": SR, "clip_seconds": 0.1,
                                "workers": 1, "split_shares": [0.5, 0.25, 0.25], "split_seed": 3}}
    raw["experiments"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    prepared = pipeline.prepare("pets")["prepared"]
    assert {s: prepared[s]["written"] for s in ("train", "valid", "test")} == {"train": 4, "valid": 2, "test": 2}
    rows = list(csv.DictReader((tmp_path / "data" / "pets" / "prepared" / "valid.csv").read_text().splitlines()))
    expected = load_folder(tmp_path / "mine", split_shares=(0.5, 0.25, 0.25), split_seed=3).splits["valid"]
    # the drawn split, its files named relative to the project root
    assert [r["path"] for r in rows] == [f"mine/{e.path.parent.name}/{e.path.name}" for e in expected]
    raw["datasets"]["pets"]["split_shares"] = [0.5, 0.5, 0.0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"datasets.pets.split_shares: split_shares must be three positive shares"):
        load_params()


def test_params_default_shares_are_the_loaders():
    from kwyn.data.custom import SPLIT_SHARES
    from kwyn.params import Custom

    assert Custom(kind="custom", path="x").split_shares == SPLIT_SHARES

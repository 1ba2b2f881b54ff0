"""Other dataset kinds and task types through the pipeline's own functions: a multi-label custom CSV
(tagging: BCE, mAP) and rendered spoken commands (classification), each in a throwaway project."""
import csv
import json
import math

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import tiny_params

from kwyn import pipeline
from kwyn.metrics import TASK_TYPES
from kwyn.report import write_all

LABELS = {"low": 220.0, "mid": 440.0, "high": 880.0}  # one sine per label; a clip sums its labels' sines
CLIPS = {"train": [["low"], ["mid"], ["high"], ["low", "mid"], ["mid", "high"], ["low", "high"], ["low"], ["high"]],
         "valid": [["low"], ["mid", "high"], ["low", "high"], ["mid"]],
         "test": [["low"], ["mid"], ["high"], ["low", "mid", "high"], ["mid", "high"]]}


def write_tagging_csv(folder):
    t = np.arange(2048) / 16000
    rows = []
    for split, clips in CLIPS.items():
        for i, labels in enumerate(clips):
            x = sum(np.sin(2 * np.pi * LABELS[label] * t) for label in labels) / 3
            name = f"audio/{split}_{i}.wav"
            (folder / "audio").mkdir(parents=True, exist_ok=True)
            sf.write(folder / name, x.astype(np.float32), 16000, subtype="PCM_16")
            rows.append({"path": name, "split": split, "labels": ";".join(labels)})
    with open(folder / "tags.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "split", "labels"])
        writer.writeheader()
        writer.writerows(rows)


def project(tmp_path, monkeypatch, datasets: dict, experiments: dict, steps: int = 6):
    """A project folder with its own params.yaml (validated by every pipeline function), as cwd."""
    raw = tiny_params(steps=steps)
    raw["datasets"], raw["experiments"] = datasets, experiments
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_multilabel_custom_csv_trains_with_bce_and_is_scored_by_map(tmp_path, monkeypatch):
    write_tagging_csv(tmp_path / "mine")
    root = project(tmp_path, monkeypatch,
                   {"tags": {"kind": "custom", "path": "mine/tags.csv", "clip_seconds": 0.064, "workers": 1}},
                   {"tags_kwyn": {"backbone": "crepe-tiny", "dataset": "tags", "task": "labels", "method": "kwyn",
                                  "sparsity": {"loss": "paper", "t": 0.5, "lambda": 50.0}}})
    prepared = pipeline.prepare("tags")["prepared"]
    assert {s: prepared[s]["written"] for s in CLIPS} == {s: len(c) for s, c in CLIPS.items()}
    meta = json.loads((root / "data" / "tags" / "prepared" / "meta.json").read_text())
    assert meta["tasks"] == {"labels": ["high", "low", "mid"]} and meta["task_kinds"] == {"labels": "multilabel"}

    summary = pipeline.train("tags_kwyn", progress=False)
    assert summary["task_type"] == "tagging" and summary["metric"] == "mAP"
    pipeline.trim("tags_kwyn")
    result = pipeline.evaluate("tags_kwyn", progress=False)
    assert result["task_type"] == "tagging" and result["metric"] == "mAP"
    assert 0 <= result["test"]["mAP"] <= 1 and 0 <= result["test"]["roc_auc"] <= 1
    assert result["test"]["labels_scored"] == 3
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-5 and result["test"] == result["test_masked"]
    assert 0 <= result["val_metric"] <= 1

    results = write_all([result], root / "tables", root / "figures")["results"]
    row = results.iloc[0]
    assert row.metric == "mAP" and row.score == result["test"]["mAP"] and math.isnan(row.w_acc)
    assert (root / "figures" / "metric_vs_trimming.png").exists()


def test_spoken_commands_render_prepare_and_train(tmp_path, monkeypatch):
    words = {"kind": "spoken_commands", "seed": 1, "words": ["yes", "stop", "off"],
             "voices": ["en-us", "en+f2", "en-gb-x-rp+m2", "en-029+m7"], "rates": [140, 200], "pitches": [50],
             "noise_db": [-30], "split_per_voice": [2, 1, 1], "clip_seconds": 0.064, "offset_seconds": 0.45,
             "workers": 1}
    root = project(tmp_path, monkeypatch, {"words": words},
                   {"words_base": {"backbone": "crepe-tiny", "dataset": "words", "task": "word", "method": "base"}},
                   steps=3)
    summary = pipeline.prepare("words")
    assert summary["rendered"]["clips"] == {"train": 12, "valid": 6, "test": 6}
    assert {s: summary["prepared"][s]["written"] for s in ("train", "valid", "test")} == summary["rendered"]["clips"]
    meta = json.loads((root / "data" / "words" / "prepared" / "meta.json").read_text())
    assert meta["tasks"] == {"word": ["off", "stop", "yes"]} and "task_kinds" not in meta

    trained = pipeline.train("words_base", progress=False)
    assert trained["task_type"] == "classification" and trained["metric"] == "weighted_accuracy"
    assert 0 <= trained["selected"]["val_metric"] <= 1


def test_a_text_task_is_asr_scored_by_wer(tmp_path):
    from kwyn.data.prepare import PreparedDataset, prepare_split, write_meta
    from kwyn.data.nsynth import Example
    from kwyn.metrics import task_type

    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    prepare_split([Example(path, {"text": "ab"})], tmp_path / "p", "train", sample_rate=16000, clip_seconds=0.1,
                  label_fields={"text": ["a", "b"]}, task_kinds={"text": "text"}, keep_lengths=True)
    write_meta(tmp_path / "p", sample_rate=16000, clip_seconds=0.1, tasks={"text": ["a", "b"]},
               task_kinds={"text": "text"})
    dataset = PreparedDataset(tmp_path / "p", "train", "text")
    name, ttype = task_type(dataset, "x")
    assert name == "asr" and ttype.primary == "wer" and not ttype.higher_is_better
    audio, lengths, (targets, target_lengths) = ttype.collate(dataset, [0])
    assert targets.tolist() == [[1, 2]] and target_lengths.tolist() == [2] and lengths.tolist() == [1600]
    head = ttype.make_head(8, dataset)
    assert head.config["vocab"] == ["a", "b"] and head.config["vocab_size"] == 2


def test_task_types_select_by_their_primary_metric():
    tagging = TASK_TYPES["tagging"]
    assert tagging.primary == "mAP" and TASK_TYPES["classification"].primary == "weighted_accuracy"
    assert tagging.better(0.5, None) and tagging.better(0.6, 0.5) and not tagging.better(0.5, 0.5)
    assert tagging.better(0.1, float("nan")) and not tagging.better(float("nan"), 0.1)

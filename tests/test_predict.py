"""A trimmed model used on its own: what it saves for inference, predict() on files and arrays, `python -m kwyn
predict`, the errors of old models and bad inputs, and file modes that other users can read.

The model: CREPE-tiny trained (head only) on a folder of 8 kHz class folders without a split, through the
pipeline's own prepare, train and trim."""
import json
import os
import shutil
import stat
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_params

import kwyn
from kwyn import pipeline
from kwyn.audio import BadAudioError, read_audio
from kwyn.data.prepare import PreparedDataset
from kwyn.heads import BiLSTMCTCHead, CharVocabulary, MLPHead
from kwyn.io import write_json
from kwyn.metrics import decode
from kwyn.model import task_model
from kwyn.trim import load_trimmed, save_trimmed

SR = 8000  # the user's recordings; the model runs at 16 kHz
TONES = {"low": 250.0, "high": 1000.0}


def write_class_folders(root, per_class=8):
    for label, freq in TONES.items():
        for i in range(per_class):
            t = np.arange(round(0.2 * SR)) / SR
            x = 0.4 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t)
            (root / label).mkdir(parents=True, exist_ok=True)
            sf.write(root / label / f"{label}{i}.wav", x.astype(np.float32), SR, subtype="PCM_16")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A throwaway project: class folders -> prepare (split drawn) -> train (base: head only) -> trim."""
    import yaml

    root = tmp_path_factory.mktemp("project")
    write_class_folders(root / "recordings")
    raw = tiny_params(steps=40, eval_every=20, checkpoint_every=20, lr=3e-3)
    raw["datasets"] = {"tones": {"kind": "custom", "path": "recordings", "clip_seconds": 0.064, "workers": 1,
                                 "split_shares": [0.5, 0.25, 0.25], "split_seed": 0}}
    raw["experiments"] = {"tones_base": {"backbone": "crepe-tiny", "dataset": "tones", "task": "label",
                                         "method": "base"}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "dvc.yaml").write_text("stages: {}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        pipeline.prepare("tones")
        pipeline.train("tones_base", progress=False)
        pipeline.trim("tones_base")
    return root


def test_saved_config_holds_what_inference_needs(project):
    config = json.loads((project / "models" / "tones_base" / "config.json").read_text())
    assert config["inference"] == {"task_type": "classification", "labels": ["high", "low"], "sample_rate": 16000,
                                   "clip_seconds": 0.064, "offset_seconds": 0.0}
    # the split was drawn per class and the prepared CSVs name the files relative to the project
    test_csv = (project / "data" / "tones" / "prepared" / "test.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[1].split("/")[1] for row in test_csv) == ["high", "high", "low", "low"]
    assert all(row.split(",")[1].startswith("recordings/") for row in test_csv)


def test_predict_files_and_arrays_gives_label_names_and_the_prepared_clips_scores(project):
    model = kwyn.load_trimmed(project / "models" / "tones_base")
    test_set = PreparedDataset(project / "data" / "tones" / "prepared", "test", "label")
    files = [project / p for p in _paths(project, "test")]
    predictions = model.predict(files)
    assert [p["label"] for p in predictions] == [test_set.classes[i] for i in test_set.labels]  # right labels
    for p in predictions:
        assert set(p["scores"]) == {"high", "low"} and sum(p["scores"].values()) == pytest.approx(1.0)
        assert p["score"] == p["scores"][p["label"]] == max(p["scores"].values())
    # a file goes through what preparation did (8 kHz -> 16 kHz, cut to 1,024 samples): the same scores
    with torch.no_grad():
        prepared = model(torch.from_numpy(np.array(test_set.audio))).softmax(dim=-1)
    got = torch.tensor([[p["scores"]["high"], p["scores"]["low"]] for p in predictions])
    torch.testing.assert_close(got, prepared, atol=1e-5, rtol=1e-5)
    # arrays at the model's rate (numpy or torch, longer than the clip: cut as files are), and one path alone
    arrays = [read_audio(f, 16000) for f in files[:2]]
    from_arrays = model.predict([arrays[0].numpy(), arrays[1]])
    assert [p["label"] for p in from_arrays] == [p["label"] for p in predictions[:2]]
    assert from_arrays[0]["scores"]["high"] == pytest.approx(predictions[0]["scores"]["high"], abs=1e-6)
    assert model.predict(str(files[0]))[0]["label"] == predictions[0]["label"]


def _paths(project, split):
    rows = (project / "data" / "tones" / "prepared" / f"{split}.csv").read_text().splitlines()[1:]
    return [row.split(",")[1] for row in rows]


def test_command_line_prints_file_label_score(project, capsys):
    files = [str(project / p) for p in _paths(project, "test")]
    out = subprocess.run([sys.executable, "-m", "kwyn", "predict", str(project / "models" / "tones_base"), *files],
                         check=True, capture_output=True, text=True, cwd=project).stdout
    expected = kwyn.load_trimmed(project / "models" / "tones_base").predict(files)
    lines = [line.split("\t") for line in out.splitlines()]
    assert [line[:2] for line in lines] == [[f, p["label"]] for f, p in zip(files, expected)]
    assert [float(line[2]) for line in lines] == pytest.approx([p["score"] for p in expected], abs=1e-4)
    from kwyn.__main__ import main

    assert main(["predict", str(project / "models" / "tones_base"), str(project / "gone.wav")]) == 1
    assert "gone.wav: no such file" in capsys.readouterr().err


def test_export_command_hands_its_arguments_to_kwyn_export(monkeypatch):
    """kwyn.export is written elsewhere; the dispatcher must hand it every argument untouched."""
    from kwyn.__main__ import main

    seen = []
    monkeypatch.setitem(sys.modules, "kwyn.export", types.SimpleNamespace(main=lambda argv: seen.append(argv) or 3))
    assert main(["export", "models/x", "--format", "onnx", "-h"]) == 3
    assert seen == [["models/x", "--format", "onnx", "-h"]]


def test_old_model_without_inference_config_says_what_is_missing_and_how_to_regenerate(project, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(project / "models" / "tones_base", old)
    config = json.loads((old / "config.json").read_text())
    inference = config.pop("inference")
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no 'inference'.*re-run its trim stage.*trim@tones_base"):
        kwyn.load_trimmed(old).predict([np.zeros(1024)])
    del inference["clip_seconds"]
    (old / "config.json").write_text(json.dumps({**config, "inference": inference}))
    with pytest.raises(ValueError, match=r"lacks \['clip_seconds'\].*python -m kwyn.pipeline trim tones_base"):
        kwyn.load_trimmed(old).predict([np.zeros(1024)])


def test_bad_inputs_name_what_is_wrong(project, tmp_path):
    model = kwyn.load_trimmed(project / "models" / "tones_base")
    with pytest.raises(BadAudioError, match="gone.wav: no such file"):
        model.predict([tmp_path / "gone.wav"])
    with pytest.raises(ValueError, match=r"input 1: expected 1-D audio samples at 16000 Hz.*shape \(2, 3, 4\)"):
        model.predict([np.zeros(1024), np.zeros((2, 3, 4))])
    with pytest.raises(ValueError, match="input 0: contains NaN"):
        model.predict([np.full(1024, np.nan)])
    with pytest.raises(TypeError, match="input 0: expected a file path or a 1-D numpy array"):
        model.predict([[0.0, 1.0]])


def _tiny_model(make_head):
    from kwyn.backbones import load_backbone

    torch.manual_seed(0)
    backbone = load_backbone("crepe-tiny")
    model = task_model(backbone, make_head(backbone.embedding_dim)).eval()
    return model, {s.name: list(range(s.units)) for s in backbone.mask_sites()}


def test_tagging_predicts_the_labels_scoring_above_one_half(tmp_path):
    model, kept = _tiny_model(lambda dim: MLPHead(dim, 3))
    with torch.no_grad():
        model.head[2].bias.copy_(torch.tensor([3.0, -3.0, 1.0]))  # tags a and c on, b off, whatever the audio
    inference = {"task_type": "tagging", "labels": ["a", "b", "c"], "sample_rate": 16000, "clip_seconds": 0.064,
                 "offset_seconds": 0.0}
    save_trimmed(model, kept, {k: len(v) for k, v in kept.items()}, tmp_path / "m", inference=inference)
    audio = 0.1 * torch.randn(1024, generator=torch.Generator().manual_seed(0))
    (p,) = kwyn.load_trimmed(tmp_path / "m").predict([audio])
    with torch.no_grad():
        expected = model(audio[None]).sigmoid()[0].tolist()
    assert p["scores"] == pytest.approx(dict(zip("abc", expected)), abs=1e-6)
    assert p["labels"] == ["a", "c"]  # above 0.5, best first
    with pytest.raises(ValueError, match="names 2 labels but the head has 3 outputs"):
        save_trimmed(model, kept, {}, tmp_path / "m2", inference={**inference, "labels": ["a", "b"]})


def test_asr_predict_is_the_greedy_decode_of_each_clips_valid_frames(tmp_path):
    vocab = CharVocabulary("abc ")
    model, kept = _tiny_model(lambda dim: BiLSTMCTCHead(dim, len(vocab), hidden=8, layers=1, vocab=vocab.chars))
    inference = {"task_type": "asr", "sample_rate": 16000, "clip_seconds": 0.128, "offset_seconds": 0.0}
    save_trimmed(model, kept, {k: len(v) for k, v in kept.items()}, tmp_path / "m", inference=inference)
    gen = torch.Generator().manual_seed(1)
    short, full = 0.1 * torch.randn(1000, generator=gen), 0.1 * torch.randn(2048, generator=gen)
    loaded = kwyn.load_trimmed(tmp_path / "m")
    got = loaded.predict([short, full])
    with torch.no_grad():  # as training saw them: padded to the clip, with their valid samples
        log_probs, frames = model(torch.stack([torch.nn.functional.pad(short, (0, 1048)), full]),
                                  torch.tensor([1000, 2048]))
    expected = decode([lp[:n] for lp, n in zip(log_probs, frames.tolist())], vocab)
    assert [p["text"] for p in got] == expected
    with pytest.raises(ValueError, match=r"input 0: 0.19 s of audio, longer than the 0.128 s clips"):
        loaded.predict([torch.zeros(3000)])


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_saved_files_follow_the_umask(project, tmp_path, umask, file_mode, folder_mode):
    """safetensors writes its file 0600; atomic_path gives what it moves into place the umask's modes."""
    model = load_trimmed(project / "models" / "tones_base")
    before = os.umask(umask)
    try:
        save_trimmed(model, model.config["kept_units"], model.config["site_units"], tmp_path / "model",
                     inference=model.config["inference"])
        write_json(tmp_path / "result.json", {"ok": True})
    finally:
        os.umask(before)

    def mode(name):
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    assert mode("model/model.safetensors") == mode("model/config.json") == mode("result.json") == file_mode
    assert mode("model") == folder_mode

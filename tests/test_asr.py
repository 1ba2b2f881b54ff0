"""ASR: backbones' frame sequences, exact trimming of them, and LibriSpeech (real layout, espeak-ng speech)
through prepare -> train (BiLSTM-CTC over characters) -> trim -> evaluate (WER) -> report."""
import math

import pytest
import soundfile as sf
import torch
from test_tasks import project

from kwyn import pipeline, speech
from kwyn.backbones import load_backbone
from kwyn.backbones.cnn14 import Cnn14Backbone
from kwyn.backbones.musicfm import MusicFMBackbone
from kwyn.backbones.wav2vec2 import Wav2Vec2Backbone
from kwyn.backbones.whisper import WhisperEncoderBackbone
from kwyn.masks import MaskSet
from kwyn.metrics import TASK_TYPES
from kwyn.params import ParamsError, validate
from kwyn.report import results_frame, results_table
from kwyn.sites import attach_all

W2V_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4)
WHISPER_TINY = dict(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=24,
                    max_source_positions=60)
MUSICFM_TINY = dict(n_mels=16, conv_dim=8, hidden_size=32, num_attention_heads=2, intermediate_size=64, rep_layer=2)


def backbones():
    torch.manual_seed(0)
    return {
        "crepe-tiny": load_backbone("crepe-tiny"),
        "whisper": WhisperEncoderBackbone(WHISPER_TINY).eval(),
        "wav2vec2": Wav2Vec2Backbone({"model_type": "wav2vec2", **W2V_TINY}),
        "wav2vec2-layer-norm": Wav2Vec2Backbone({"model_type": "wav2vec2", "feat_extract_norm": "layer",
                                                 "do_stable_layer_norm": True, **W2V_TINY}),
        "musicfm": MusicFMBackbone(MUSICFM_TINY).eval(),
    }


@pytest.mark.parametrize("name", ["crepe-tiny", "whisper", "wav2vec2", "wav2vec2-layer-norm", "musicfm"])
def test_sequence_averages_to_the_embedding_and_counts_valid_frames(name):
    backbone = backbones()[name]
    samples = 8000 if backbone.sample_rate == 16000 else 12000
    audio = 0.3 * torch.randn(2, samples, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, frames = backbone.sequence(audio)
        embedding = backbone.embed(audio)
    assert features.shape[-1] == backbone.embedding_dim and frames.tolist() == [features.shape[1]] * 2
    torch.testing.assert_close(features.mean(dim=1), embedding, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        _, half = backbone.sequence(audio, torch.tensor([samples, samples // 2]))
    assert half[0] == features.shape[1] and 0 < half[1] < half[0]
    assert abs(half[1] / half[0] - 0.5) < 0.1  # about half the frames


def test_a_backbone_without_frames_says_so_and_params_reject_it_for_asr():
    with torch.device("meta"):
        cnn = Cnn14Backbone({"kind": "msclap"})
    assert not cnn.has_sequence()
    with pytest.raises(NotImplementedError, match="'cnn14' gives no frame sequence"):
        cnn.sequence(torch.zeros(1, 10))
    from conftest import tiny_params

    raw = tiny_params()
    raw["datasets"]["libri"] = {"kind": "librispeech", "root": "x"}
    raw["experiments"]["asr"] = {"backbone": "clap-cnn14", "dataset": "libri", "task": "transcript", "method": "base"}
    with pytest.raises(ParamsError, match="clap-cnn14' gives no frame sequence"):
        validate(raw)
    raw["experiments"]["asr"]["backbone"] = "crepe-tiny"
    assert validate(raw).experiments["asr"].task == "transcript"


def test_trimmed_sequence_equals_masked_sequence():
    backbone = WhisperEncoderBackbone(WHISPER_TINY).eval()
    masks = MaskSet(backbone.mask_sites())
    gen = torch.Generator().manual_seed(0)
    for mask in masks.values():
        n = mask.logits.numel()
        mask.logits.data = torch.where(torch.randperm(n, generator=gen) < n // 2, 1.0, -1.0)
    audio, lengths = 0.1 * torch.randn(2, 6000, generator=gen), torch.tensor([6000, 3500])
    handles = attach_all(backbone, masks.values())
    with torch.no_grad():
        masked, masked_frames = backbone.sequence(audio, lengths)
    for h in handles:
        h.remove()
    backbone.trim(masks.kept_units())
    with torch.no_grad():
        trimmed, trimmed_frames = backbone.sequence(audio, lengths)
    torch.testing.assert_close(trimmed, masked, atol=1e-5, rtol=1e-5)
    assert torch.equal(trimmed_frames, masked_frames)


def test_asr_is_scored_by_wer_lower_is_better():
    asr = TASK_TYPES["asr"]
    assert asr.primary == "wer" and not asr.higher_is_better
    assert asr.better(0.4, None) and asr.better(0.3, 0.4) and not asr.better(0.5, 0.4)
    assert asr.improvement(0.3, 0.4) == pytest.approx(0.1)


# the real LibriSpeech layout: <subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + .trans.txt
UTTERANCES = {"train-clean-100": ["YES", "NO", "GO HOME", "STOP IT", "UP", "DOWN"],
              "dev-clean": ["GO", "YES NO"], "test-clean": ["STOP", "NO GO"]}


def write_librispeech(root):
    for subset, texts in UTTERANCES.items():
        chapter = root / "LibriSpeech" / subset / "19" / "198"
        chapter.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            utt = f"19-198-{i:04d}"
            sf.write(chapter / f"{utt}.flac", speech.synthesize(text.lower(), rate_wpm=200), 16000)
            lines.append(f"{utt} {text}")
        (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_trains_trims_and_evaluates_by_wer(tmp_path, monkeypatch):
    write_librispeech(tmp_path / "libri")
    root = project(tmp_path, monkeypatch,
                   {"libri": {"kind": "librispeech", "root": "libri", "clip_seconds": 1.5, "workers": 1}},
                   {"asr_kwyn": {"backbone": "crepe-tiny", "dataset": "libri", "task": "transcript",
                                 "method": "kwyn", "sparsity": {"loss": "paper", "t": 0.5, "lambda": 50.0},
                                 "train": {"batch_size": 2, "eval_every": 2, "checkpoint_every": 2}}},
                   steps=4)
    prepared = pipeline.prepare("libri")["prepared"]
    assert {s: prepared[s]["written"] for s in ("train", "valid", "test")} == {"train": 6, "valid": 2, "test": 2}

    summary = pipeline.train("asr_kwyn", progress=False)
    assert summary["task_type"] == "asr" and summary["metric"] == "wer"
    assert math.isfinite(summary["selected"]["val_metric"]) and summary["selected"]["val_metric"] >= 0
    pipeline.trim("asr_kwyn")
    result = pipeline.evaluate("asr_kwyn", progress=False)
    assert result["task_type"] == "asr" and result["metric"] == "wer" and result["higher_is_better"] is False
    assert math.isfinite(result["test"]["wer"]) and result["test"]["wer"] >= 0 and result["test"]["cer"] >= 0
    assert result["differing_decodes"] == 0 and result["test"] == result["test_masked"]
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-4

    from kwyn.trim import load_trimmed

    model = load_trimmed(root / "models" / "asr_kwyn")  # rebuilt from its config, vocabulary included
    assert model.vocabulary.chars == list(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert model.config["inference"] == {"task_type": "asr", "sample_rate": 16000, "clip_seconds": 1.5,
                                         "offset_seconds": 0.0}  # the vocabulary is the head's
    (utterance,) = sorted((root / "libri").rglob("test-clean/**/*.flac"))[:1]
    (prediction,) = model.predict([utterance])  # a file, decoded greedily over the head's characters
    assert set(prediction) == {"text"} and set(prediction["text"]) <= set(model.vocabulary.chars)

    base = {**result, "experiment": "asr_base", "method": "base", "test": {**result["test"], "wer": 0.9}}
    trimmed = {**result, "test": {**result["test"], "wer": 0.6}}
    t1 = results_table(results_frame([base, trimmed]))
    row = t1[t1.setting != "base"].iloc[0]
    assert row.metric == "wer" and row.delta_vs_base == pytest.approx(0.3)  # lower WER = positive delta


def test_custom_csv_with_a_transcript_column_is_an_asr_task(tmp_path):
    from kwyn.data.custom import load_csv

    rows = ["path,split,transcript"]
    for split, text in (("train", "go home"), ("train", "stop"), ("valid", "go"), ("test", "home")):
        name = f"{split}_{len(rows)}.wav"
        sf.write(tmp_path / name, speech.synthesize(text), 16000)
        rows.append(f"{name},{split},{text}")
    (tmp_path / "speech.csv").write_text("\n".join(rows) + "\n")
    data = load_csv(tmp_path / "speech.csv")
    assert data.task == "transcript" and data.kind == "text"
    assert data.labels == sorted(set("go homestop")) and data.splits["test"][0].labels == {"transcript": "home"}

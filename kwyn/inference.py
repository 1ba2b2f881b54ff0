"""Predictions of a saved trimmed model on audio: `kwyn.load_trimmed(path).predict(["a.wav", "b.wav"])`.

A saved model's config.json holds what inference needs ("inference", kwyn.trim.inference_config): the
task type, the label names, the sample rate and the clips the model was trained on. Each input goes
through what preparation did to the training clips: a file is decoded and resampled to the model's
rate (kwyn.audio.read_audio), then cut at the offset to the clip length and zero-padded
(kwyn.data.prepare.fit_clip); a 1-D numpy array or torch tensor is taken as audio already decoded at
the model's rate and cut the same way. Audio longer than the clip is cut, as in preparation; for ASR
it is refused instead, since preparation never cuts speech (it leaves such utterances out).

One result per input, a dict:
  classification  {"label": the top label, "score": its probability, "scores": {label: probability}}
                  (softmax over the labels)
  tagging         {"labels": the labels scoring above TAG_THRESHOLD, best first, "scores": {label: score}}
                  (a sigmoid per label)
  asr             {"text": the greedy CTC decode (kwyn.metrics.decode)}
Label names are those of the prepared dataset's meta.json (e.g. class folder names, or MIDI pitches).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from kwyn.audio import read_audio
from kwyn.data.prepare import fit_clip
from kwyn.metrics import decode
from kwyn.model import predict

TAG_THRESHOLD = 0.5  # a tag is predicted when its sigmoid score is above this
SETTINGS = ("task_type", "sample_rate", "clip_seconds", "offset_seconds")  # + "labels" unless ASR


def inference_settings(model) -> dict:
    """config.json's "inference" block of a model rebuilt by kwyn.load_trimmed, or a ValueError naming what is
    missing and how to get it."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("predict needs a model rebuilt by kwyn.load_trimmed, whose config.json says how it was "
                         "trained (labels, sample rate, clip length)")
    where = getattr(model, "path", "the model")
    experiment = config.get("metadata", {}).get("experiment")
    rerun = (f"re-run its trim stage (dvc repro -f -s trim@{experiment}, or python -m kwyn.pipeline trim "
             f"{experiment})" if experiment else "save it again with kwyn.trim.save_trimmed(..., "
             "inference=kwyn.trim.inference_config(prepared_data, task))")
    inference = config.get("inference")
    if inference is None:
        raise ValueError(f"{where} was saved without what predict needs (config.json has no 'inference': label "
                         f"names, task type, sample rate, clip length); {rerun}")
    needed = SETTINGS + (() if inference.get("task_type") == "asr" else ("labels",))
    missing = [k for k in needed if k not in inference]
    if missing:
        raise ValueError(f"{where}: config.json's 'inference' lacks {missing}; {rerun}")
    return inference


class _Clips(torch.utils.data.Dataset):
    """Prepared clips as kwyn.model.predict reads a dataset: (audio, label) items and valid samples per clip."""

    def __init__(self, clips: list[torch.Tensor], lengths: torch.Tensor | None):
        self.clips, self.lengths = clips, lengths

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        return self.clips[i], None


def _as_list(inputs) -> list:
    """One input (a path, or a 1-D array) or several (a list of them, or the rows of a 2-D array)."""
    if isinstance(inputs, (str, os.PathLike)) or (isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 1):
        return [inputs]
    return list(inputs)


def _audio(item, index: int, sample_rate: int) -> tuple[str, torch.Tensor]:
    """(a name for messages, mono float32 audio at sample_rate) of a path or an array."""
    if isinstance(item, (str, os.PathLike)):
        return str(item), read_audio(item, sample_rate)  # BadAudioError names the file
    name = f"input {index}"
    if not isinstance(item, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name}: expected a file path or a 1-D numpy array / torch tensor of samples, "
                        f"got {type(item).__name__}")
    x = torch.as_tensor(np.asarray(item) if isinstance(item, np.ndarray) else item.detach().cpu()).float()
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"{name}: expected 1-D audio samples at {sample_rate} Hz (mono), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf samples")
    return name, x


def predict_audio(model, inputs, batch_size: int = 32) -> list[dict]:
    """Predictions (module doc) of a model rebuilt by kwyn.load_trimmed for file paths or 1-D arrays at its rate."""
    s = inference_settings(model)
    rate = s["sample_rate"]
    length, offset = round(s["clip_seconds"] * rate), round(s["offset_seconds"] * rate)
    clips, valid = [], []
    for i, item in enumerate(_as_list(inputs)):
        name, x = _audio(item, i, rate)
        clip, available = fit_clip(x, length, offset)
        if s["task_type"] == "asr" and available > length:
            raise ValueError(f"{name}: {available / rate:.2f} s of audio, longer than the {s['clip_seconds']} s "
                             "clips the model was trained on; ASR never cuts speech: split the audio")
        clips.append(clip)
        valid.append(min(available, length))
    if not clips:
        return []
    # sequence (ASR) models see each clip's valid samples, as in training; pooled ones the padded clip
    lengths = torch.tensor(valid) if s["task_type"] == "asr" else None
    outputs = predict(model, _Clips(clips, lengths), batch_size)
    if s["task_type"] == "asr":
        return [{"text": text} for text in decode(outputs, model.vocabulary)]
    labels = s["labels"]
    if s["task_type"] == "classification":
        results = []
        for probs in outputs.softmax(dim=-1).tolist():
            best = max(range(len(labels)), key=probs.__getitem__)
            results.append({"label": labels[best], "score": probs[best], "scores": dict(zip(labels, probs))})
        return results
    results = []
    for scores in outputs.sigmoid().tolist():
        above = sorted((i for i, p in enumerate(scores) if p > TAG_THRESHOLD), key=lambda i: -scores[i])
        results.append({"labels": [labels[i] for i in above], "scores": dict(zip(labels, scores))})
    return results

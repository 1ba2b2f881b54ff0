"""The end-to-end model f(x) = g(e(x)): a backbone's representation fed to a task head.

TaskModel (classification, tagging): the time-averaged embedding into an MLP head; outputs
logits (B, K). AsrModel (ASR): the backbone's frame sequence into the BiLSTM-CTC head; outputs
(log-probs (B, T, C), valid frames (B,)). Both split their forward into `features` (the frozen,
possibly masked encoder) and `apply_head`, so training can run the encoder without gradients
while the head learns. `task_model` picks the class from the head's config.
"""
from __future__ import annotations

import torch
from torch import nn

from kwyn.backbones import Backbone


class TaskModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        return self.backbone.embed(audio)  # clips are compared at their prepared (padded) length

    def apply_head(self, features):
        return self.head(features)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        return self.apply_head(self.features(audio, lengths))

    def predict(self, inputs, batch_size: int = 32) -> list[dict]:
        """Label and scores (ASR: text) per audio file or 1-D array at the model's rate (kwyn.inference),
        for a model rebuilt by kwyn.load_trimmed: its config says what it was trained on."""
        from kwyn.inference import predict_audio  # here: the pipeline's stages never load it (dvc.yaml deps)

        return predict_audio(self, inputs, batch_size)


class AsrModel(TaskModel):
    """Backbone frame sequence -> BiLSTMCTCHead; forward -> (log-probs (B, T, C), valid frames (B,))."""

    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        return self.backbone.sequence(audio, lengths)

    def apply_head(self, features):
        sequence, frames = features
        return self.head(sequence, frames), frames

    @property
    def vocabulary(self):
        return self.head.vocabulary


def task_model(backbone: Backbone, head: nn.Module) -> TaskModel:
    """The model class the head calls for: AsrModel for a sequence (CTC) head, TaskModel otherwise."""
    kind = getattr(head, "config", {}).get("kind")
    return (AsrModel if kind == "bilstm_ctc" else TaskModel)(backbone, head)


def _split(outputs) -> list[torch.Tensor]:
    """A sequence model's batch output (log-probs, frames) as one (frames_i, C) tensor per item."""
    log_probs, frames = outputs
    return [lp[:n] for lp, n in zip(log_probs, frames.tolist())]


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 32, indices=None, progress: bool = False):
    """Outputs for `dataset[i]` (audio, label) over `indices` (all by default), in order.

    A pooled model gives one logits tensor (N, K); a sequence model a list of N (frames_i, C)
    log-prob tensors, each cut to its valid frames. dataset.lengths (valid samples, when the
    split kept them) is handed to the model with each batch.
    """
    from kwyn.io import tqdm

    indices = list(range(len(dataset))) if indices is None else list(indices)
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    all_lengths = getattr(dataset, "lengths", None)
    device = next(model.parameters()).device
    outputs, sequences = [], []
    for chunk in tqdm(chunks, desc="predict", disable=not progress, leave=False):
        audio = torch.stack([dataset[i][0] for i in chunk]).to(device)
        out = model(audio, all_lengths[chunk] if all_lengths is not None else None)
        if isinstance(out, tuple):
            sequences.extend(_split((out[0].float().cpu(), out[1].cpu())))
        else:
            outputs.append(out.float().cpu())
    if sequences:
        return sequences
    return torch.cat(outputs) if outputs else torch.empty(0)


def max_abs_diff(a, b) -> float:
    """Largest |a - b| between two predict() results (tensors, or lists of per-item tensors)."""
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max()) if a.numel() else 0.0
    if len(a) != len(b):
        raise ValueError(f"{len(a)} outputs vs {len(b)}")
    diffs = [float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()]
    return max(diffs, default=0.0)

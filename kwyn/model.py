"""The end-to-end model f(x) = g(e(x)): a backbone's embedding fed to a task head."""
from __future__ import annotations

import torch
from torch import nn

from kwyn.backbones import Backbone


class TaskModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.embed(audio))


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 32, indices=None, progress: bool = False) -> torch.Tensor:
    """Logits for `dataset[i]` (audio, label) over `indices` (all by default), in order."""
    from tqdm import tqdm

    indices = list(range(len(dataset))) if indices is None else list(indices)
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    outputs = []
    for chunk in tqdm(chunks, desc="predict", disable=not progress, leave=False):
        audio = torch.stack([dataset[i][0] for i in chunk])
        outputs.append(model(audio))
    return torch.cat(outputs) if outputs else torch.empty(0)

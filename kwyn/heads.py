"""Task heads trained on top of the (masked) encoder's embedding."""
from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Two-layer MLP, hidden 1024, ReLU: the paper's head for classification and tagging."""

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 1024):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))
        self.config = {"kind": "mlp", "in_dim": in_dim, "n_outputs": n_outputs, "hidden": hidden}


def build_head(config: dict) -> nn.Module:
    config = dict(config)
    kind = config.pop("kind")
    if kind == "mlp":
        return MLPHead(**config)
    raise KeyError(f"unknown head kind {kind!r}; known: mlp")

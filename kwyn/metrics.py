"""Task metrics, from torchmetrics.

"Weighted accuracy" (the paper's w-Acc.) is per-class recall averaged with weights equal to
each class's share of the test set, which for single-label classification equals plain
accuracy (correct / total). Macro accuracy (unweighted mean of per-class recall) is reported
beside it, as it is the fairer number when classes are imbalanced.
"""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_accuracy


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    preds = logits.argmax(dim=-1)
    return {
        "weighted_accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="weighted")),
        "macro_accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="macro")),
    }

"""Task metrics, from torchmetrics (classification, tagging) and jiwer (ASR).

Classification. "Weighted accuracy" (the paper's w-Acc.) is per-class recall averaged with weights
equal to each class's share of the test set, which for single-label classification equals plain
accuracy (correct / total). Macro accuracy (unweighted mean of per-class recall) is reported
beside it, as it is the fairer number when classes are imbalanced.

Tagging (multi-label). mAP is the macro mean over labels of each label's average precision
(torchmetrics MultilabelAveragePrecision, i.e. the step-wise area under the precision-recall
curve, over all test clips); ROC-AUC is the macro mean of per-label AUROC. A label with no
positive test clip has no defined AP or AUROC (and for AUROC, none with no negative either):
such labels are left out of the mean, not counted as 0 (torchmetrics' macro would count
them as 0), and `labels_scored` says how many labels each mean covers.

ASR. WER and CER are corpus-level (jiwer): total substitutions + deletions + insertions over
all utterances, divided by the total number of reference words (characters), so long
utterances weigh more; not a mean of per-utterance rates. An empty hypothesis counts all its
reference words as deletions.

TASK_TYPES (end of file) ties each task type to its loss (kwyn.heads.task_loss), its metrics and
its primary metric: train.py selects checkpoints by it, evaluate.py reports it, report.py tables it.
"""
from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Callable, NamedTuple

import jiwer
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multilabel_auroc, multilabel_average_precision

from kwyn.heads import task_loss


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    preds = logits.argmax(dim=-1)
    return {
        "weighted_accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="weighted")),
        "macro_accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="macro")),
    }


def tagging_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """mAP and ROC-AUC (macro over scorable labels) of logits (N, K) against multi-hot targets (N, K)."""
    targets = targets.long()
    n_labels = targets.shape[1]
    positives = targets.sum(dim=0)
    has_pos = positives > 0
    has_both = has_pos & (positives < targets.shape[0])
    with warnings.catch_warnings():
        # torchmetrics warns about labels without positives; we leave those out below
        warnings.simplefilter("ignore", UserWarning)
        ap = multilabel_average_precision(logits.float(), targets, n_labels, average=None)
        auc = multilabel_auroc(logits.float(), targets, n_labels, average=None)
    nan = float("nan")
    return {
        "mAP": float(ap[has_pos].mean()) if has_pos.any() else nan,
        "roc_auc": float(auc[has_both].mean()) if has_both.any() else nan,
        "labels_scored": int(has_pos.sum()),
        "labels_scored_roc_auc": int(has_both.sum()),
    }


def asr_metrics(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus-level WER and CER of hypotheses against references (same order, same length)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("asr_metrics needs at least one utterance")
    return {"wer": float(jiwer.wer(list(references), list(hypotheses))),
            "cer": float(jiwer.cer(list(references), list(hypotheses)))}


class TaskType(NamedTuple):
    """How one task type is trained and scored: loss(outputs, targets), metrics(outputs, targets, num_classes),
    the primary metric (validation selection, tables) and whether higher is better."""
    loss: Callable
    metrics: Callable
    primary: str
    higher_is_better: bool = True

    def better(self, value: float, than: float | None) -> bool:
        """Whether `value` beats `than` (None: nothing yet); NaN (e.g. no positive label) never wins."""
        if than is None or math.isnan(than):
            return than is None or not math.isnan(value)
        return value > than if self.higher_is_better else value < than


TASK_TYPES = {
    "classification": TaskType(partial(task_loss, "classification"), classification_metrics, "weighted_accuracy"),
    "tagging": TaskType(partial(task_loss, "tagging"), lambda logits, targets, _: tagging_metrics(logits, targets),
                        "mAP"),
}
# PreparedDataset.kind (how labels are stored) -> task type
PREPARED_TASK_TYPES = {"label": "classification", "multilabel": "tagging", "text": "asr"}


def task_type(dataset, experiment: str = "") -> tuple[str, TaskType]:
    """(name, TaskType) of a PreparedDataset's task; ASR stops here until its training is wired."""
    name = PREPARED_TASK_TYPES[dataset.kind]
    if name not in TASK_TYPES:
        raise NotImplementedError(f"{f'experiment {experiment!r}: ' if experiment else ''}task {dataset.task!r} "
                                  f"of {dataset.root} is {name}: ASR training (BiLSTM-CTC "
                                  "head, CTC loss, WER) is not wired into train/evaluate yet")
    return name, TASK_TYPES[name]

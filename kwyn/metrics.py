"""Task metrics: classification from a confusion matrix, tagging from torchmetrics, ASR from jiwer.

Classification. "Weighted accuracy" (the paper's w-Acc.) is per-class recall averaged with weights
equal to each class's share of the test set, which for single-label classification equals plain
accuracy (correct / total). Macro accuracy (unweighted mean of per-class recall) is reported
beside it, as it is the fairer number when classes are imbalanced; as in torchmetrics'
multiclass_accuracy(average="macro"), the mean runs over the classes that occur in the labels or
the predictions. Both are read off the confusion matrix rather than from torchmetrics, whose
package import costs about 8 s (it loads torchvision, transformers and scipy.signal for metrics
unrelated to ours), paid by each of the default grid's 40 train and evaluate stages, over 4 minutes
in all; tests/test_heads_metrics.py checks them against torchmetrics.

Tagging (multi-label). mAP is the macro mean over labels of each label's average precision
(torchmetrics MultilabelAveragePrecision, i.e. the step-wise area under the precision-recall
curve, over all test clips); ROC-AUC is the macro mean of per-label AUROC. A label with no
positive test clip has no defined AP or AUROC (and for AUROC, none with no negative either):
such labels are left out of the mean, not counted as 0 (torchmetrics' macro would count
them as 0), and `labels_scored` says how many labels each mean covers.

ASR. WER and CER are corpus-level (jiwer): total substitutions + deletions + insertions over
all utterances, divided by the total number of reference words (characters), so long
utterances weigh more; not a mean of per-utterance rates. An empty hypothesis counts all its
reference words as deletions. Hypotheses are greedy CTC decodes (best path, repeats collapsed,
blanks dropped); lower is better.

TASK_TYPES (end of file) ties each task type to its loss (kwyn.heads.task_loss), its metrics and
its primary metric (and its direction: WER is better lower), its head and how a batch is collated:
train.py selects checkpoints by it, evaluate.py reports it, report.py tables it.
"""
from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Callable, NamedTuple

import jiwer
import torch

from torch import nn

from kwyn.heads import BiLSTMCTCHead, CharVocabulary, MLPHead, greedy_decode, task_loss


def _torchmetrics():
    """torchmetrics' functional classification module, imported on first use (tagging only): importing
    it pulls in torchvision and costs about 8 s, paid otherwise by every notebook of the pipeline."""
    from torchmetrics.functional import classification

    return classification


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must be (N, {num_classes}), got {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows but {labels.numel()} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    preds = logits.argmax(dim=-1).cpu()
    confusion = torch.bincount(labels.cpu() * num_classes + preds, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes)  # rows: label, columns: prediction
    correct, support, predicted = confusion.diag(), confusion.sum(dim=1), confusion.sum(dim=0)
    occurring = (support + predicted) > 0
    recall = correct / support.clamp(min=1)  # 0 for a class only ever predicted, as torchmetrics
    return {
        "weighted_accuracy": float(correct.sum() / support.sum()) if labels.numel() else 0.0,
        "macro_accuracy": float(recall[occurring].mean()) if occurring.any() else 0.0,
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
        ap = _torchmetrics().multilabel_average_precision(logits.float(), targets, n_labels, average=None)
        auc = _torchmetrics().multilabel_auroc(logits.float(), targets, n_labels, average=None)
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


def decode(outputs: list[torch.Tensor], vocab: CharVocabulary) -> list[str]:
    """Greedy CTC decodes of per-utterance log-probs (frames_i, C), as kwyn.model.predict returns them."""
    return [greedy_decode(lp[None], None, vocab)[0] for lp in outputs]


def asr_output_metrics(outputs: list[torch.Tensor], references: list[str], vocab: CharVocabulary) -> dict:
    """WER and CER (asr_metrics) of the greedy decodes of per-utterance log-probs."""
    return asr_metrics(decode(outputs, vocab), references)


# -- how each task type builds its head, collates a batch and is scored -------------------
def _mlp_head(in_dim: int, dataset) -> nn.Module:
    return MLPHead(in_dim, dataset.num_classes)


def _ctc_head(in_dim: int, dataset) -> nn.Module:
    vocab = CharVocabulary(dataset.classes)  # meta.json's characters, in their stored (index) order
    return BiLSTMCTCHead(in_dim, len(vocab), vocab=vocab.chars)


def _collate_clips(dataset, indices: list[int]):
    """(audio (B, samples), None, labels[indices]): pooled tasks compare clips at their prepared length."""
    return torch.stack([dataset[i][0] for i in indices]), None, dataset.labels[indices]


def _collate_transcripts(dataset, indices: list[int]):
    """(audio (B, samples), valid samples (B,) or None, (padded targets (B, S), target lengths (B,))).
    Targets are CharVocabulary ids: the prepared character index + 1 (0 is the CTC blank)."""
    audio = torch.stack([dataset[i][0] for i in indices])
    lengths = dataset.lengths[indices] if dataset.lengths is not None else None
    chars = [dataset.labels[i] + 1 for i in indices]
    target_lengths = torch.tensor([len(c) for c in chars], dtype=torch.long)
    targets = torch.zeros(len(chars), max([1, *target_lengths.tolist()]), dtype=torch.long)
    for row, c in zip(targets, chars):
        row[:len(c)] = c
    return audio, lengths, (targets, target_lengths)


def _ctc_loss(outputs, targets) -> torch.Tensor:
    (log_probs, frames), (chars, char_lengths) = outputs, targets
    return task_loss("asr", log_probs, chars, input_lengths=frames, target_lengths=char_lengths)


def _labels(dataset, indices: list[int]):
    return dataset.labels[indices]


def _texts(dataset, indices: list[int]) -> list[str]:
    return [dataset.texts[i] for i in indices]


def _num_classes(dataset) -> int:
    return dataset.num_classes


def _vocabulary(dataset) -> CharVocabulary:
    return CharVocabulary(dataset.classes)


def _no_agreement(a, b, context) -> dict:
    return {}


def _decode_agreement(a: list[torch.Tensor], b: list[torch.Tensor], vocab: CharVocabulary) -> dict:
    return {"differing_decodes": sum(x != y for x, y in zip(decode(a, vocab), decode(b, vocab)))}


class TaskType(NamedTuple):
    """How one task type is trained and scored.

    loss(outputs, targets): the training loss of the model's outputs against collate's targets;
    metrics(outputs, references, context): the metrics dict of predict()'s outputs;
    primary: the metric that selects checkpoints and fills tables; higher_is_better its direction;
    make_head(in_dim, dataset): the head over the backbone's embedding (pooled) or frames (sequence);
    collate(dataset, indices) -> (audio, valid samples or None, targets): one training batch;
    references(dataset, indices), context(dataset): the metrics' second and third arguments;
    agreement(outputs_a, outputs_b, context): extra masked-vs-trimmed checks for evaluate.
    """
    loss: Callable
    metrics: Callable
    primary: str
    higher_is_better: bool = True
    make_head: Callable = _mlp_head
    collate: Callable = _collate_clips
    references: Callable = _labels
    context: Callable = _num_classes
    agreement: Callable = _no_agreement

    def better(self, value: float, than: float | None) -> bool:
        """Whether `value` beats `than` (None: nothing yet); NaN (e.g. no positive label) never wins."""
        if than is None or math.isnan(than):
            return than is None or not math.isnan(value)
        return value > than if self.higher_is_better else value < than

    def improvement(self, value: float, reference: float) -> float:
        """value - reference in the direction of better: positive when `value` is the better one."""
        return value - reference if self.higher_is_better else reference - value

    def score(self, outputs, dataset, indices=None) -> dict:
        """metrics of predict()'s outputs for dataset[indices] (all by default)."""
        indices = list(range(len(dataset))) if indices is None else list(indices)
        return self.metrics(outputs, self.references(dataset, indices), self.context(dataset))


TASK_TYPES = {
    "classification": TaskType(partial(task_loss, "classification"), classification_metrics, "weighted_accuracy"),
    "tagging": TaskType(partial(task_loss, "tagging"), lambda logits, targets, _: tagging_metrics(logits, targets),
                        "mAP"),
    "asr": TaskType(_ctc_loss, asr_output_metrics, "wer", higher_is_better=False, make_head=_ctc_head,
                    collate=_collate_transcripts, references=_texts, context=_vocabulary,
                    agreement=_decode_agreement),
}
# PreparedDataset.kind (how labels are stored) -> task type
PREPARED_TASK_TYPES = {"label": "classification", "multilabel": "tagging", "text": "asr"}


def task_type(dataset, experiment: str = "") -> tuple[str, TaskType]:
    """(name, TaskType) of a PreparedDataset's task."""
    name = PREPARED_TASK_TYPES[dataset.kind]
    return name, TASK_TYPES[name]

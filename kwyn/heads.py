"""Task heads trained on top of the (masked) encoder's embedding, and the task losses.

Classification and tagging: MLPHead on a pooled embedding (batch, dim).
ASR: BiLSTMCTCHead on the frame sequence (batch, time, dim), trained with CTC over characters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

BLANK = 0  # CTC blank index, in the vocabulary and in the head's output classes


class MLPHead(nn.Sequential):
    """Two-layer MLP, hidden 1024, ReLU: the paper's head for classification and tagging."""

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 1024):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))
        self.config = {"kind": "mlp", "in_dim": in_dim, "n_outputs": n_outputs, "hidden": hidden}


class BiLSTMCTCHead(nn.Module):
    """The paper's ASR head: bidirectional LSTM (2 layers, hidden 256 per direction), a linear
    layer to the characters + the CTC blank, log-softmax.

    vocab_size counts the characters only (len(CharVocabulary)); the head outputs vocab_size + 1
    classes, class 0 being the blank. forward(x (B, T, D), lengths (B,)) -> log-probs (B, T, C).
    vocab (the characters, in index order 1..vocab_size) is kept in the config, so a saved head
    decodes its own outputs (`vocabulary`).
    """

    def __init__(self, in_dim: int, vocab_size: int, hidden: int = 256, layers: int = 2, vocab=None):
        super().__init__()
        if vocab is not None and len(vocab) != vocab_size:
            raise ValueError(f"vocab has {len(vocab)} characters but vocab_size is {vocab_size}")
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, vocab_size + 1)
        self.config = {"kind": "bilstm_ctc", "in_dim": in_dim, "vocab_size": vocab_size, "hidden": hidden,
                       "layers": layers}
        if vocab is not None:
            self.config["vocab"] = list(vocab)

    @property
    def vocabulary(self) -> "CharVocabulary":
        if "vocab" not in self.config:
            raise ValueError("this BiLSTMCTCHead was built without its vocabulary")
        return CharVocabulary(self.config["vocab"])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, time, _ = x.shape
        if lengths is None:
            lengths = torch.full((batch,), time, dtype=torch.long)
        # packed, so the backward direction starts at each item's own last frame, not in the padding
        packed = pack_padded_sequence(x, lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=time)
        return self.out(hidden).log_softmax(dim=-1)  # frames past an item's length are meaningless


def build_head(config: dict) -> nn.Module:
    config = dict(config)
    kind = config.pop("kind")
    if kind == "mlp":
        return MLPHead(**config)
    if kind == "bilstm_ctc":
        return BiLSTMCTCHead(**config)
    raise KeyError(f"unknown head kind {kind!r}; known: mlp, bilstm_ctc")


class CharVocabulary:
    """Characters of the training transcripts; index 0 is the CTC blank, characters are 1..len(self)."""

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("CharVocabulary needs distinct single characters")
        self.chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_transcripts(cls, transcripts) -> "CharVocabulary":
        return cls(sorted(set("".join(transcripts))))  # sorted: the same text gives the same indices

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def num_classes(self) -> int:
        return len(self.chars) + 1  # + blank

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self._index))
        if unknown:
            raise KeyError(f"characters {unknown} are not in the vocabulary")
        return [self._index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != BLANK)

    def to_dict(self) -> dict:
        return {"blank": BLANK, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharVocabulary":
        if data.get("blank", BLANK) != BLANK:
            raise ValueError(f"saved vocabulary has blank {data['blank']}, this code uses {BLANK}")
        return cls(data["chars"])

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocabulary) and self.chars == other.chars


def ctc_loss(log_probs: torch.Tensor, input_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CTC for batch-first log-probs (B, T, C) as BiLSTMCTCHead returns them.

    targets: padded (B, S) or concatenated (sum of target_lengths,), blank-free ids.
    reduction "mean" is torch's: each item's loss divided by its target length, then averaged.
    zero_infinity: an item whose target cannot fit its frames gives 0 and no NaN gradient.
    """
    return F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths,  # torch wants (T, B, C)
                      blank=BLANK, reduction=reduction, zero_infinity=True)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | None, vocab: CharVocabulary) -> list[str]:
    """Best path per item: argmax per frame within its length, collapse repeats, drop blanks."""
    best = log_probs.argmax(dim=-1).cpu()
    if lengths is None:
        lengths = torch.full((best.shape[0],), best.shape[1], dtype=torch.long)
    texts = []
    for path, n in zip(best.tolist(), lengths.tolist()):
        path = path[:n]
        collapsed = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
        texts.append(vocab.decode(collapsed))
    return texts


TASK_KINDS = ("classification", "tagging", "asr")


def task_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor, *, input_lengths: torch.Tensor | None = None,
              target_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's loss per task kind, averaged over the batch.

    classification: cross-entropy of logits (B, K) against class ids (B,);
    tagging: BCE-with-logits of logits (B, K) against multi-hot targets (B, K), mean over labels too;
    asr: CTC of log-probs (B, T, C) against character ids, needing input_lengths and target_lengths.
    """
    if kind == "classification":
        return F.cross_entropy(outputs, targets)
    if kind == "tagging":
        return F.binary_cross_entropy_with_logits(outputs, targets.float())
    if kind == "asr":
        if input_lengths is None or target_lengths is None:
            raise ValueError("task_loss('asr', ...) needs input_lengths and target_lengths")
        return ctc_loss(outputs, input_lengths, targets, target_lengths)
    raise KeyError(f"unknown task kind {kind!r}; known: {', '.join(TASK_KINDS)}")

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kwyn.heads import (BLANK, BiLSTMCTCHead, CharVocabulary, MLPHead, build_head, ctc_loss, greedy_decode,
                        task_loss)
from kwyn.metrics import asr_metrics, classification_metrics, tagging_metrics


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def test_vocabulary_round_trip():
    vocab = CharVocabulary.from_transcripts(["go", "off", "no"])
    assert vocab.chars == ["f", "g", "n", "o"] and len(vocab) == 4 and vocab.num_classes == 5
    ids = vocab.encode("off")
    assert ids == [4, 1, 1] and BLANK not in ids
    assert vocab.decode(ids) == "off"
    assert vocab.decode([BLANK, 2, BLANK, 4]) == "go"  # blanks are dropped
    again = CharVocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.encode("no") == vocab.encode("no")
    with pytest.raises(KeyError):
        vocab.encode("yes")
    with pytest.raises(ValueError):
        CharVocabulary(["a", "a"])


def test_build_head_kinds():
    mlp = build_head(MLPHead(8, 3, hidden=16).config)
    assert isinstance(mlp, MLPHead) and mlp(torch.zeros(2, 8)).shape == (2, 3)
    head = build_head({"kind": "bilstm_ctc", "in_dim": 8, "vocab_size": 4, "hidden": 16, "layers": 2})
    assert isinstance(head, BiLSTMCTCHead) and head.config["vocab_size"] == 4
    assert build_head(head.config).config == head.config
    assert head.lstm.bidirectional and head.lstm.num_layers == 2
    out = head(torch.randn(3, 9, 8), torch.tensor([9, 5, 2]))
    assert out.shape == (3, 9, 5)  # 4 characters + blank
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, 9))  # log-probabilities
    with pytest.raises(KeyError):
        build_head({"kind": "transformer"})


def test_greedy_decode_hand_built():
    vocab = CharVocabulary(["a", "b"])  # classes: 0 blank, 1 a, 2 b

    def frames(path):
        return torch.log(F.one_hot(torch.tensor(path), 3).float() * 0.98 + 0.01)

    paths = [[1, 1, 0, 1, 2, 2, 0],  # a a _ a b b _ -> "aab"
             [2, 2, 1, 0, 0, 1, 1]]  # cut at 3 frames -> "ba"; the rest is padding
    log_probs = torch.stack([frames(p) for p in paths])
    assert greedy_decode(log_probs, torch.tensor([7, 3]), vocab) == ["aab", "ba"]
    assert greedy_decode(log_probs, None, vocab) == ["aab", "baa"]  # all frames: b b a _ _ a a


def test_padding_does_not_leak():
    torch.manual_seed(0)
    head = BiLSTMCTCHead(6, 3, hidden=8).eval()
    short, long = torch.randn(1, 5, 6), torch.randn(1, 9, 6)
    batch = torch.cat([F.pad(short, (0, 0, 0, 4), value=100.0), long])  # garbage padding
    lengths = torch.tensor([5, 9])
    alone = head(short, torch.tensor([5]))
    together = head(batch, lengths)
    torch.testing.assert_close(together[0, :5], alone[0])
    torch.testing.assert_close(together[1], head(long, torch.tensor([9]))[0])

    targets = torch.tensor([[1, 2, 0], [3, 1, 1]])  # padded targets: only target_lengths count
    target_lengths = torch.tensor([2, 3])
    per_item = ctc_loss(together, lengths, targets, target_lengths, reduction="none")
    first_alone = ctc_loss(alone, torch.tensor([5]), targets[:1, :2], target_lengths[:1], reduction="none")
    torch.testing.assert_close(per_item[0], first_alone[0])
    flat = torch.tensor([1, 2, 3, 1, 1])  # the concatenated target form gives the same losses
    torch.testing.assert_close(ctc_loss(together, lengths, flat, target_lengths, reduction="none"), per_item)


def test_ctc_loss_impossible_target_is_zero_not_inf():
    log_probs = torch.randn(1, 2, 4).log_softmax(-1).requires_grad_()
    loss = ctc_loss(log_probs, torch.tensor([2]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(log_probs.grad).all()


def test_bilstm_ctc_learns_toy_transcripts():
    torch.manual_seed(0)
    texts = ["go", "off", "no"]  # "off" needs a blank between its two f's
    vocab = CharVocabulary.from_transcripts(texts)
    lengths = torch.tensor([8, 12, 10])
    features = torch.randn(3, 12, 5)
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(vocab.encode(t)) for t in texts], batch_first=True)
    target_lengths = torch.tensor([len(t) for t in texts])
    head = BiLSTMCTCHead(5, len(vocab), hidden=32)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(400):
        log_probs = head(features, lengths)
        loss = task_loss("asr", log_probs, targets, input_lengths=lengths, target_lengths=target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 and greedy_decode(head(features, lengths), lengths, vocab) == texts:
            break
    assert greedy_decode(head(features, lengths), lengths, vocab) == texts, f"loss {loss.item():.3f}"


def test_task_loss_kinds():
    zeros = torch.zeros(2, 4)
    assert task_loss("classification", zeros, torch.tensor([0, 3])).item() == pytest.approx(math.log(4))
    tags = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]])
    assert task_loss("tagging", zeros, tags).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[2.0, -1.0]])
    expected = -(math.log(torch.sigmoid(torch.tensor(2.0)).item()) + math.log(torch.sigmoid(torch.tensor(1.0)).item())) / 2
    assert task_loss("tagging", logits, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-5)
    log_probs = torch.randn(2, 6, 4).log_softmax(-1)
    args = (torch.tensor([6, 4]), torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]))
    assert task_loss("asr", log_probs, args[1], input_lengths=args[0], target_lengths=args[2]).item() == \
        pytest.approx(ctc_loss(log_probs, *args).item())
    with pytest.raises(ValueError):
        task_loss("asr", log_probs, args[1])
    with pytest.raises(KeyError):
        task_loss("regression", zeros, zeros)


def test_tagging_metrics_hand_computed():
    scores = torch.tensor([[0.9, 0.2, 0.5],
                           [0.8, 0.7, 0.4],
                           [0.3, 0.6, 0.3],
                           [0.1, 0.4, 0.2]])
    targets = torch.tensor([[1, 0, 0],
                            [0, 1, 0],
                            [1, 1, 0],
                            [0, 0, 0]])
    # label 0 ranks +,-,+,-: AP = (1/1 + 2/3) / 2 = 5/6; AUROC = 3 of 4 pos/neg pairs = 0.75
    # label 1 ranks +,+,-,-: AP = 1, AUROC = 1.  label 2 has no positive: left out of both means
    expected = {"mAP": (5 / 6 + 1) / 2, "roc_auc": (0.75 + 1) / 2, "labels_scored": 2, "labels_scored_roc_auc": 2}
    got = tagging_metrics(scores, targets)
    assert got == pytest.approx(expected)
    assert tagging_metrics(torch.logit(scores), targets) == pytest.approx(expected)  # logits: same ranking
    everywhere = targets.clone()
    everywhere[:, 1] = 1  # a label positive in every clip: AP 1, AUROC undefined
    got = tagging_metrics(scores, everywhere)
    assert got["labels_scored"] == 2 and got["labels_scored_roc_auc"] == 1
    assert got["mAP"] == pytest.approx((5 / 6 + 1) / 2) and got["roc_auc"] == pytest.approx(0.75)


def test_classification_metrics_weighted_is_accuracy():
    logits = F.one_hot(torch.tensor([0, 0, 0, 1, 2]), 3).float()
    got = classification_metrics(logits, torch.tensor([0, 0, 1, 1, 2]), 3)
    assert got["weighted_accuracy"] == pytest.approx(4 / 5)  # correct / total
    assert got["macro_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)


@pytest.mark.parametrize("seed, case", list(enumerate(["all classes", "class absent from labels", "class never predicted",
                                                        "few examples"])))
def test_classification_metrics_equal_torchmetrics(seed, case):
    from torchmetrics.functional.classification import multiclass_accuracy

    generator = torch.Generator().manual_seed(seed)
    k, n = (6, 3) if case == "few examples" else (5, 40)
    labels = torch.randint(0, k, (n,), generator=generator)
    logits = torch.randn(n, k, generator=generator)
    if case == "class absent from labels":  # predicted sometimes, never a label: recall 0 in the macro mean
        labels[labels == 3] = 0
        logits[:5, 3] = 10.0
    if case == "class never predicted":  # a label, never predicted
        logits[:, 2] = -10.0
    if case == "all classes":  # and one class neither a label nor predicted: left out of the macro mean
        labels[labels == 4] = 1
        logits[:, 4] = -10.0
    got = classification_metrics(logits, labels, k)
    preds = logits.argmax(-1)
    for average, key in (("weighted", "weighted_accuracy"), ("macro", "macro_accuracy")):
        want = float(multiclass_accuracy(preds, labels, k, average=average))
        assert got[key] == pytest.approx(want, abs=1e-6), (average, case)


def test_classification_metrics_reject_bad_labels_and_shapes():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="0..3"):
        classification_metrics(logits, torch.tensor([0, 4, 1]), 4)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        classification_metrics(logits, torch.tensor([0, 1, 2]), 5)
    with pytest.raises(ValueError, match="3 logits rows but 2 labels"):
        classification_metrics(logits, torch.tensor([0, 1]), 4)


def test_classification_metrics_do_not_import_torchmetrics():
    # the point of computing them here: a scoring process does not pay torchmetrics' ~8 s import
    import subprocess
    import sys

    code = ("import sys, torch; from kwyn.metrics import classification_metrics; "
            "classification_metrics(torch.eye(3), torch.tensor([0, 1, 2]), 3); "
            "assert 'torchmetrics' not in sys.modules, 'torchmetrics was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_asr_metrics_hand_computed():
    references = ["turn the light on", "stop"]
    hypotheses = ["turn light of", "stop"]
    got = asr_metrics(hypotheses, references)
    # words: "the" deleted, "on" -> "of" substituted: 2 errors / 5 reference words
    # characters: "the " deleted (4) + n -> f (1) = 5 errors / 21 reference characters (spaces count)
    assert got == pytest.approx({"wer": 2 / 5, "cer": 5 / 21})
    # corpus-level: an empty hypothesis deletes all 4 words of its reference; 4 / 5 total
    assert asr_metrics(["", "stop"], references)["wer"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError):
        asr_metrics(["a"], ["a", "b"])

"""Cost counting, metrics and atomic output against hand-computed values."""
import pytest
import torch
from torch import nn

from kwyn import profile
from kwyn.io import atomic_path, write_json
from kwyn.metrics import classification_metrics


def test_flops_of_a_linear_and_a_conv_equal_the_hand_count():
    lin = nn.Linear(10, 4)
    assert profile.flops(lin, torch.randn(3, 10)) == 2 * 3 * 10 * 4
    conv = nn.Conv1d(2, 5, kernel_size=3)
    assert profile.flops(conv, torch.randn(1, 2, 9)) == 2 * 5 * 7 * 2 * 3  # out ch x positions x in ch x kernel
    cost = profile.cost(lin, torch.randn(3, 10))
    assert cost["params"] == 44 and cost["size_mb"] == pytest.approx(44 * 4 / 1e6, abs=1e-3)
    assert cost["gmacs"] == pytest.approx(cost["gflops"] / 2)


def test_latency_measures_every_model_and_restores_threads():
    before = torch.get_num_threads()
    result = profile.latency_ms({"a": nn.Linear(8, 8), "b": nn.Linear(8, 2)}, torch.randn(1, 8), repeats=3, warmup=1)
    assert set(result) == {"a", "b"} and all(v > 0 for v in result.values())
    assert torch.get_num_threads() == before


def test_weighted_and_macro_accuracy_match_hand_values():
    # 6 examples: class 0 x4 (3 right), class 1 x1 (right), class 2 x1 (wrong)
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0])
    logits = torch.nn.functional.one_hot(preds, 3).float()
    m = classification_metrics(logits, labels, 3)
    assert m["weighted_accuracy"] == pytest.approx(4 / 6)  # support-weighted recall = accuracy
    assert m["macro_accuracy"] == pytest.approx((3 / 4 + 1 + 0) / 3)


def test_atomic_path_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but unfinished")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and len(list(tmp_path.iterdir())) == 1


class _Layer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        out = self.layer(x, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out


def test_attention_matmuls_are_counted():
    """sdpa's CPU kernels have no FLOP formula: counting must go through eager attention."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    config = WhisperConfig(d_model=16, encoder_attention_heads=2, encoder_ffn_dim=32)
    config._attn_implementation = "sdpa"
    layer = WhisperEncoderLayer(config).eval()
    counted = profile.flops(_Layer(layer), torch.randn(1, 10, 16))
    linear = 2 * 10 * 16 * 16 * 4 + 2 * 10 * 16 * 32 * 2  # q, k, v, out projections + two FFN layers
    attention = 2 * 2 * (10 * 10 * 8) * 2  # QK^T and AV: 2 heads of size 8, 10 x 10 positions
    assert counted == linear + attention
    assert config._attn_implementation == "sdpa"  # restored after counting

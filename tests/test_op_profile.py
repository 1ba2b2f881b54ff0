"""benchmarks/op_profile.py: per-operator time of a full and a trimmed backbone, on CREPE-tiny."""
import importlib.util
import json

import pytest
import torch
from conftest import ROOT

from kwyn import profile
from kwyn.backbones import load_backbone

spec = importlib.util.spec_from_file_location("op_profile", ROOT / "benchmarks" / "op_profile.py")
op_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(op_profile)


def test_op_profile_compares_the_operators_of_a_full_and_a_trimmed_model(tmp_path):
    out = tmp_path / "op.json"
    result = op_profile.main(["--backbone", "crepe-tiny", "--input-seconds", "0.064", "--ratio", "0.5",
                              "--threads", "1", "--repeats", "2", "--json", str(out)])
    assert json.loads(out.read_text())["flops_ratio"] == pytest.approx(result["flops_ratio"])
    assert result["removed"] == pytest.approx(0.5, abs=0.05)
    torch.manual_seed(0)
    full = load_backbone("crepe-tiny", pretrained=False)
    example = full.example_input(0.064, 1)
    assert result["gflops"]["full"] == pytest.approx(profile.cost(full, example)["gflops"])
    assert result["gflops"]["trimmed"] < result["gflops"]["full"]
    # CREPE's work is convolutions: the trimmed model's slowest operator (times are not compared: a tiny model's
    # operators take microseconds, where the profiler's own cost and the machine's noise decide)
    rows = result["operators"]
    assert "conv" in rows[0]["operator"] and [r["trimmed_ms"] for r in rows] == sorted((r["trimmed_ms"] for r in rows),
                                                                                     reverse=True)
    assert all(r["shrink"] == pytest.approx(r["full_ms"] / r["trimmed_ms"]) for r in rows if r["trimmed_ms"])
    assert sum(r["share_of_trimmed"] for r in rows) <= 1 + 1e-9
    assert result["speedup"] == pytest.approx(result["wall_ms"]["full"] / result["wall_ms"]["trimmed"])

    # per kind: CREPE-tiny's convolutions on one frame, counted by hand (2 x out x in x kernel x output length)
    widths, kernels, lengths = [128, 16, 16, 16, 32, 64], [512] + [64] * 5, [256, 128, 64, 32, 16, 8]
    conv_flops = sum(2 * out * inp * k * n for out, inp, k, n in zip(widths, [1] + widths[:-1], kernels, lengths))
    conv = result["kinds"]["convolution"]
    assert conv["full_gflops"] == pytest.approx(conv_flops / 1e9)
    assert conv["flops_shrink"] == pytest.approx(conv["full_gflops"] / conv["trimmed_gflops"]) and conv["flops_shrink"] > 1
    assert conv["time_shrink"] == pytest.approx(conv["full_ms"] / conv["trimmed_ms"])
    assert conv["trimmed_gflop_per_s"] == pytest.approx(conv["trimmed_gflops"] / conv["trimmed_ms"] * 1e3)
    assert result["kinds"]["matmul"]["full_gflops"] == pytest.approx(2 * 4 * 64 * 360 / 1e9)  # the classifier


def test_op_profile_refuses_a_ratio_outside_0_1(tmp_path):
    with pytest.raises(SystemExit):
        op_profile.main(["--backbone", "crepe-tiny", "--input-seconds", "0.064", "--ratio", "1.0",
                         "--json", str(tmp_path / "x.json")])


def test_op_profile_in_onnx_runtime_times_the_exported_models_operators(tmp_path):
    out = tmp_path / "ort.json"
    result = op_profile.main(["--backbone", "crepe-tiny", "--input-seconds", "0.064", "--ratio", "0.5",
                              "--threads", "1", "--repeats", "2", "--runtime", "onnxruntime", "--json", str(out)])
    assert json.loads(out.read_text())["runtime"] == "onnxruntime" and "kinds" not in result
    rows = result["operators"]
    assert any("Conv" in r["operator"] for r in rows)  # ONNX Runtime's op types, not aten's
    assert not any(r["operator"].startswith("aten::") for r in rows)
    assert all(r["full_ms"] >= 0 and r["trimmed_ms"] >= 0 for r in rows)
    assert 0 < sum(r["trimmed_ms"] for r in rows) <= result["operators_ms"]["trimmed"] * (1 + 1e-9)
    assert result["speedup"] == pytest.approx(result["wall_ms"]["full"] / result["wall_ms"]["trimmed"])

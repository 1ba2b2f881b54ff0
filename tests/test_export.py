"""ONNX export and int8 of trimmed models: every backbone family, rebuilt from disk, run by ONNX Runtime.

Tiny random models of each family are trimmed with random keeps in which one site keeps no unit
(tests/trimming.py), saved with save_trimmed, exported from their directory, and run by ONNX
Runtime at batch sizes and lengths other than the traced ones.
"""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import onnx
import pytest
import torch

from kwyn.backbones import build_backbone
from kwyn.export import (ATOL, evaluate_int8, export_onnx, file_size_mb, main, onnx_session, optimized_nodes,
                         quantize_int8, weight_nodes)
from kwyn.heads import BiLSTMCTCHead, MLPHead
from kwyn.model import task_model
from kwyn.trim import load_trimmed, save_trimmed, trim_model
from trimming import random_keep

# family -> (tiny config, clip samples, sites left with no unit)
TINY = {
    "crepe": ({"family": "crepe", "capacity": "tiny"}, 2048, ("conv3",)),
    "whisper-encoder": ({"family": "whisper-encoder", "num_mel_bins": 16, "d_model": 32, "encoder_layers": 2,
                         "encoder_attention_heads": 4, "encoder_ffn_dim": 24, "max_source_positions": 60}, 4000,
                        ("layer0.attention", "layer1.ffn")),
    "wav2vec2": ({"family": "wav2vec2", "model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "intermediate_size": 64, "conv_dim": [16] * 7,
                  "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "num_conv_pos_embeddings": 16,
                  "num_conv_pos_embedding_groups": 4}, 4000, ("layer0.attention", "conv6")),
    "musicfm": ({"family": "musicfm", "n_mels": 16, "conv_dim": 8, "hidden_size": 32, "num_attention_heads": 2,
                 "intermediate_size": 64, "conv_depthwise_kernel_size": 7, "rep_layer": 2}, 24000,
                ("layer0.attention", "layer1.conv")),
    "cnn14": ({"family": "cnn14", "kind": "msclap", "widths": [2, 4, 8, 16, 32, 64], "fc1_dim": 64,
               "projection_dim": 32}, 44100, ("block3.conv1",)),
}


def trimmed_dir(family, path, head="mlp", seed=0):
    """A trimmed tiny model of `family` saved at `path` (one or two sites with no unit left)."""
    config, _, empty = TINY[family]
    torch.manual_seed(seed)
    backbone = build_backbone(config).eval()
    for bn in backbone.modules():  # non-trivial statistics, so that eval-mode BatchNorm matters
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    site_units = {s.name: s.units for s in backbone.mask_sites()}
    base_config = dict(backbone.config)
    keep = {k: v.tolist() for k, v in random_keep(backbone, torch.Generator().manual_seed(seed), empty).items()}
    trim_model(backbone, keep)
    head_module = MLPHead(backbone.embedding_dim, 5, hidden=16) if head == "mlp" else \
        BiLSTMCTCHead(backbone.embedding_dim, 4, hidden=8, vocab="abcd")
    save_trimmed(task_model(backbone, head_module).eval(), keep, site_units, path, base_config=base_config)
    return path


def audio(batch, samples, seed):
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", sorted(TINY))
def test_exported_trimmed_model_equals_pytorch_at_other_batch_sizes_and_lengths(family, tmp_path):
    model_dir = trimmed_dir(family, tmp_path / "model")
    model = load_trimmed(model_dir)
    empty = TINY[family][2]
    assert all(len(model.config["kept_units"][site]) == 0 for site in empty)
    out = export_onnx(model_dir, tmp_path / "model.onnx")
    session = onnx_session(out)
    samples = TINY[family][1]
    assert [i.name for i in session.get_inputs()] == ["audio"] and [o.name for o in session.get_outputs()] == [
        "logits"]
    for batch, length in [(1, samples), (4, int(samples * 0.8) + 7)]:  # neither is the traced (2, 1 s)
        x = audio(batch, length, seed=batch)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"audio": x.numpy()})[0]
        assert got.shape == expected.shape == (batch, 5)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["kwyn.sample_rate"]) == model.backbone.sample_rate
    assert json.loads(meta["kwyn.config"])["kept_units"] == model.config["kept_units"]


def test_asr_model_exports_log_probs_and_frames_at_a_fixed_length(tmp_path):
    model = load_trimmed(trimmed_dir("whisper-encoder", tmp_path / "asr", head="ctc"))
    session = onnx_session(export_onnx(model, tmp_path / "asr.onnx", seconds=3000 / 16000))
    assert [o.name for o in session.get_outputs()] == ["log_probs", "frames"]
    for batch in (1, 4):  # the batch is dynamic
        x = audio(batch, 3000, seed=batch)
        with torch.no_grad():
            log_probs, frames = model(x)  # the packed LSTM, every clip at full length
        got_log_probs, got_frames = session.run(None, {"audio": x.numpy()})
        np.testing.assert_allclose(got_log_probs, log_probs.numpy(), atol=ATOL, rtol=0)
        np.testing.assert_array_equal(got_frames, frames.numpy())
    with pytest.raises(Exception, match="audio"):  # the length is not: ONNX Runtime names the input
        session.run(None, {"audio": audio(1, 3200, seed=0).numpy()})


def test_cli_writes_fp32_and_int8_next_to_the_model(tmp_path, capsys):
    model_dir = trimmed_dir("whisper-encoder", tmp_path / "whisper_word_kwyn_50")
    assert main([str(model_dir), "--onnx", "--int8"]) == 0
    fp32, int8 = tmp_path / "whisper_word_kwyn_50.onnx", tmp_path / "whisper_word_kwyn_50.int8.onnx"
    assert fp32.is_file() and int8.is_file() and "wrote" in capsys.readouterr().out
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops  # the Linear layers run in int8
    assert file_size_mb(int8) < file_size_mb(fp32)
    x = audio(2, 4000, seed=3)
    with torch.no_grad():
        expected = load_trimmed(model_dir)(x).numpy()
    got = onnx_session(int8).run(None, {"audio": x.numpy()})[0]
    # close, not exact: per-tensor int8 (0.35 % here; 20 % when the empty layers were quantised too)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert main([str(model_dir), "--onnx", "--out", str(tmp_path / "sub" / "m.onnx")]) == 0
    assert (tmp_path / "sub" / "m.onnx").is_file()


def test_int8_leaves_the_layers_with_no_unit_float(tmp_path):
    """A MatMul whose weight has no element stays a float MatMul; every other Linear runs in int8."""
    fp32 = export_onnx(trimmed_dir("whisper-encoder", tmp_path / "tiny"), tmp_path / "tiny.onnx", seconds=0.25)
    nodes = weight_nodes(fp32)
    empty = {name for name, _, shape in nodes if 0 in shape}
    assert empty  # layer0 has no head left, layer1 no FFN unit
    graph = onnx.load(str(quantize_int8(fp32, tmp_path / "tiny.int8.onnx"))).graph
    assert {node.name for node in graph.node if node.op_type == "MatMul"} >= empty
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == len(nodes) - len(empty)


def test_cli_rejects_a_directory_that_is_no_trimmed_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--onnx"])
    assert "not a trimmed model directory" in capsys.readouterr().err


def test_evaluate_int8_scores_a_tiny_model_on_its_test_split(tmp_path, tiny_data):
    from kwyn.data.prepare import PreparedDataset

    test_set = PreparedDataset(tiny_data, "test", "pitch")
    config, _, empty = TINY["crepe"]
    backbone = build_backbone(config).eval()
    site_units = {s.name: s.units for s in backbone.mask_sites()}
    keep = {k: v.tolist() for k, v in random_keep(backbone, torch.Generator().manual_seed(1), empty).items()}
    base_config = dict(backbone.config)
    trim_model(backbone, keep)
    model = task_model(backbone, MLPHead(backbone.embedding_dim, test_set.num_classes)).eval()
    save_trimmed(model, keep, site_units, tmp_path / "models" / "tiny_kwyn", base_config=base_config)
    result = evaluate_int8(tmp_path / "models" / "tiny_kwyn", test_set, repeats=3, warmup=1)
    assert result["metric"] == "weighted_accuracy"
    assert 0.0 <= result["int8"] <= 1.0 and 0.0 <= result["fp32"] <= 1.0
    assert result["size_mb"] < result["fp32_size_mb"] and result["latency_ms"] > 0 and result["fp32_latency_ms"] > 0
    # the fp32 ONNX model scores what PyTorch's trimmed model scores
    from kwyn.metrics import task_type
    from kwyn.model import predict

    pytorch = task_type(test_set)[1].score(predict(model, test_set), test_set)["weighted_accuracy"]
    assert result["fp32"] == pytest.approx(pytorch)
    # by default only the Linear layers are quantised, the convolutions stay float (see kwyn.export)
    ops = {node.op_type for node in onnx.load(result["onnx_int8"]).graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops and "MatMulInteger" in ops


def test_int8_sensitivity_quantises_exactly_the_named_node(tmp_path):
    """benchmarks/int8_sensitivity.py: one node at a time means one int8 MatMul in the graph, every node means all."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("int8_sensitivity", ROOT / "benchmarks" / "int8_sensitivity.py")
    sensitivity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sensitivity)
    fp32 = export_onnx(trimmed_dir("whisper-encoder", tmp_path / "tiny"), tmp_path / "tiny.onnx", seconds=0.25)
    nodes = weight_nodes(fp32)
    assert len(nodes) >= 4 and all(op in ("MatMul", "Gemm") and len(shape) == 2 for _, op, shape in nodes)

    def int8_matmuls(path):
        return sum(node.op_type == "MatMulInteger" for node in onnx.load(str(path)).graph.node)

    assert int8_matmuls(sensitivity.quantized(fp32, tmp_path / "one.onnx", nodes=[nodes[1][0]])) == 1
    assert int8_matmuls(sensitivity.quantized(fp32, tmp_path / "all.onnx")) == len(nodes)


def test_conv_layout_counts_the_convolutions_onnx_runtime_keeps_in_its_blocked_layout(tmp_path, capsys):
    """A CNN14 whose widths are multiples of 16 has its convolutions blocked (NCHWc) on an AVX2 / AVX-512 CPU;
    trimmed to odd widths, fewer are; trimmed to multiples of 16, as many as in the full model."""
    from kwyn.export import conv_layout

    config = {"family": "cnn14", "kind": "msclap", "widths": [16, 32, 32, 48, 48, 64], "fc1_dim": 64,
              "projection_dim": 32}
    layouts = {}
    for name, keep_of in (("full", lambda n: n), ("odd", lambda n: n - 3), ("x16", lambda n: max(16, n - 16))):
        torch.manual_seed(0)
        backbone = build_backbone(config).eval()
        site_units = {s.name: s.units for s in backbone.mask_sites()}
        keep = {site: list(range(keep_of(n))) for site, n in site_units.items()}
        base_config = dict(backbone.config)
        trim_model(backbone, keep)
        save_trimmed(task_model(backbone, MLPHead(backbone.embedding_dim, 5, hidden=16)).eval(), keep, site_units,
                     tmp_path / name, base_config=base_config)
        layouts[name] = conv_layout(export_onnx(tmp_path / name, tmp_path / f"{name}.onnx", seconds=0.5))
    assert layouts["full"]["convs"] == layouts["odd"]["convs"] == layouts["x16"]["convs"] >= 12
    if layouts["full"]["blocked"] == 0:
        pytest.skip("ONNX Runtime has no blocked convolution layout on this CPU (it needs AVX2 or AVX-512)")
    assert layouts["x16"]["blocked"] == layouts["full"]["blocked"]
    assert layouts["odd"]["blocked"] < layouts["full"]["blocked"]
    assert main([str(tmp_path / "odd"), "--onnx"]) == 0
    assert f"runs {layouts['odd']['blocked']} of its {layouts['odd']['convs']} convolutions" in capsys.readouterr().out


def test_sessions_keep_layer_norms_unfused_where_onnx_runtime_would_fuse_them(tmp_path):
    """kwyn.export.onnx_session turns off SkipLayerNormFusion (slower on CPU: benchmarks/ort_layernorm.py);
    ONNX Runtime's defaults fuse a transformer's residual adds and layer norms, and the outputs do not change."""
    out = export_onnx(trimmed_dir("wav2vec2", tmp_path / "model"), tmp_path / "model.onnx")
    default_ops = [n.op_type for n in optimized_nodes(out, unfused="")]  # ONNX Runtime's defaults
    kwyn_ops = [n.op_type for n in optimized_nodes(out)]
    assert "SkipLayerNormalization" in default_ops
    assert "SkipLayerNormalization" not in kwyn_ops and "LayerNormalization" in kwyn_ops
    x = audio(2, 4000, seed=3).numpy()
    np.testing.assert_allclose(onnx_session(out).run(None, {"audio": x})[0],
                               onnx_session(out, unfused="").run(None, {"audio": x})[0], atol=ATOL, rtol=0)


def test_whisper_exports_its_stft_as_a_product_with_the_dft_basis(tmp_path):
    """ONNX Runtime's STFT kernel is slow at Whisper's 400-point FFT: the exported graph has no STFT node, and its
    power spectrum is torch.stft's (the export itself is checked against PyTorch within ATOL)."""
    model_dir = trimmed_dir("whisper-encoder", tmp_path / "model")
    out = export_onnx(model_dir, tmp_path / "model.onnx")
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "STFT" not in ops and "MatMul" in ops
    from kwyn.backbones.whisper import power_spectrum_by_dft

    backbone = load_trimmed(model_dir).backbone
    x = audio(2, 4000, seed=3)
    expected = backbone.power_spectrum(x)  # eager: torch.stft
    got = power_spectrum_by_dft(x, backbone.window)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.max().item())

"""kwyn's CLAP audio encoders against the upstream packages' own model classes, on random weights.

The upstream model (msclap's AudioEncoder; laion-clap's CLAP with a PANN-14 audio branch) is built
with random weights and random BatchNorm statistics, its state_dict is saved in the upstream
checkpoint's layout, read back through kwyn's real loader and key mapping
(`load_backbone(..., checkpoint=file)` -> `cnn14.audio_state_dict`), and both embed the same audio.
No download: only the audio branches are built (msclap's text encoder would fetch BERT; laion-clap's
CLAP gets a small local text transformer, its "transformer" text type).

MusicFM has no package on PyPI (its code is a GitHub repository), so tests/test_musicfm.py compares
with a look-alike written from its source instead.
"""
import importlib
import os
import sys
import types
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from kwyn.backbones import load_backbone


def randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm statistics and affines, so that the eval-mode normalisation is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.copy_(0.3 * torch.randn(bn.num_features, generator=gen))
                bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
                bn.weight.copy_(1 + 0.2 * torch.randn(bn.num_features, generator=gen))
                bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen))


def clip(sample_rate: int, seconds: float = 1.0, batch: int = 2) -> torch.Tensor:
    return 0.1 * torch.randn(batch, int(sample_rate * seconds), generator=torch.Generator().manual_seed(7))


def test_msclap_audio_encoder_equals_kwyn_clap_cnn14(tmp_path):
    pytest.importorskip("msclap")
    from msclap.models.clap import AudioEncoder

    torch.manual_seed(0)
    # msclap's config_2022.yml: Cnn14, out_emb 2048, d_proj 1024, 44.1 kHz, window 1024, hop 320, 64 mels, 50-14000 Hz
    upstream = AudioEncoder("Cnn14", d_in=2048, d_out=1024, sample_rate=44100, window_size=1024, hop_size=320,
                            mel_bins=64, fmin=50, fmax=14000, classes_num=527)
    randomise_norms(upstream, seed=1)
    upstream.eval()
    # CLAP_weights_2022.pth's layout: {"model": CLAP's state_dict}; a text-encoder key and the logit scale too
    state = {f"audio_encoder.{k}": v for k, v in upstream.state_dict().items()}
    state |= {"caption_encoder.projection.linear1.weight": torch.randn(1024, 768), "logit_scale": torch.tensor(2.6)}
    torch.save({"model": state}, tmp_path / "CLAP_weights_2022.pth")
    ours = load_backbone("clap-cnn14", checkpoint=str(tmp_path))
    x = clip(44100)
    with torch.no_grad():
        expected, _ = upstream(x)
        got = ours.embed(x, sample_rate=44100)
    assert got.shape == expected.shape == (2, 1024) and expected.std() > 0.1  # not a vacuous comparison
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _laion_clap_module(name: str):
    """A module of laion_clap.clap_module without running the package's __init__ files: laion_clap's
    imports its training data code, which fetches tokenizers from the hub at import time."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None:
        pytest.skip("laion_clap is not installed")
    root = Path(spec.submodule_search_locations[0])
    for package, path in (("laion_clap", root), ("laion_clap.clap_module", root / "clap_module")):
        if package not in sys.modules:
            stub = types.ModuleType(package)
            stub.__path__ = [str(path)]
            sys.modules[package] = stub
    return importlib.import_module(f"laion_clap.clap_module.{name}")


def test_laion_clap_pann14_equals_kwyn_laion_clap_cnn14(tmp_path):
    model = _laion_clap_module("model")
    torch.manual_seed(0)
    # laion_clap/clap_module/model_configs/PANN-14.json's audio branch; joint_embed_shape 512 and mlp_act "relu"
    # are CLAP's defaults; a tiny local text transformer stands in for the text branch (never used here)
    audio_cfg = {"model_type": "PANN", "model_name": "Cnn14", "sample_rate": 48000, "window_size": 1024,
                 "hop_size": 480, "mel_bins": 64, "fmin": 50, "fmax": 14000, "class_num": 527,
                 "audio_length": 1024, "clip_samples": 480000}
    text_cfg = {"context_length": 8, "vocab_size": 16, "width": 8, "heads": 1, "layers": 1,
                "model_type": "transformer"}
    upstream = model.CLAP(embed_dim=2048, audio_cfg=audio_cfg, text_cfg=text_cfg, joint_embed_shape=512,
                          mlp_act="relu")
    randomise_norms(upstream, seed=2)
    upstream.eval()
    # LAION-CLAP's training checkpoints: {"state_dict": DDP-prefixed CLAP state_dict, "epoch": ...}
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in upstream.state_dict().items()}},
               tmp_path / "pann14.pt")
    ours = load_backbone("laion-clap-cnn14", checkpoint=str(tmp_path / "pann14.pt"))
    x = clip(48000)
    with torch.no_grad():
        expected = upstream({"waveform": x}, None, device="cpu")  # CLAP.forward with no text: the projected audio
        got = ours.embed(x, sample_rate=48000)
    assert got.shape == expected.shape == (2, 512) and expected.std() > 1e-3  # not a vacuous comparison
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

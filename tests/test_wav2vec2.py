"""Wav2Vec2 / HuBERT / WavLM backbone: masks, exact trimming, save/load, checkpoint loading.

Tiny random-init models only; checkpoints are written with transformers' save_pretrained into
tmp_path and read back through the same from_pretrained path as real weights. No network.
"""
import json
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

from kwyn.backbones import build_backbone, load_backbone
from kwyn.backbones.wav2vec2 import Wav2Vec2Backbone
from kwyn.masks import UnitMask
from trimming import random_masks, masked_embedding

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4)
VARIANTS = {
    "wav2vec2": {"model_type": "wav2vec2", **TINY},
    # conv biases: a conv left with no input channel still passes its bias on
    "wav2vec2-conv-bias": {"model_type": "wav2vec2", "conv_bias": True, **TINY},
    "hubert": {"model_type": "hubert", **TINY},
    "hubert-no-proj-norm": {"model_type": "hubert", "feat_proj_layer_norm": False, **TINY},
    "wavlm": {"model_type": "wavlm", **TINY},
    # large-lv60 style: LayerNorm in every conv (no conv sites there), pre-norm encoder, conv biases
    "wav2vec2-layer-norm": {"model_type": "wav2vec2", "feat_extract_norm": "layer", "do_stable_layer_norm": True,
                            "conv_bias": True, **TINY},
}
# per site: "none", "some" (random half) or "all" units kept; sites not named keep "some"
SCENARIOS = {
    "mixed": {"conv1": "all", "conv4": "all", "layer0.attention": "none", "layer1.ffn": "none", "layer0.ffn": "all"},
    "empty-convs": {"conv2": "none", "conv6": "none", "layer1.attention": "all", "layer0.ffn": "none"},
}


def audio(batch=2, samples=4000, seed=1):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trimmed_model_equals_masked_model(variant, scenario):
    torch.manual_seed(0)
    backbone = Wav2Vec2Backbone(VARIANTS[variant])
    x = audio()
    with torch.no_grad():
        full = backbone.embed(x)
    masks = random_masks(backbone, SCENARIOS[scenario])
    masked = masked_embedding(backbone, masks, x)
    assert not torch.allclose(masked, full, atol=1e-3), "masks should change the embedding"
    keep = {name: m.kept() for name, m in masks.items()}
    expected_params = backbone.trimmed_param_count(keep)
    backbone.trim(keep)
    with torch.no_grad():
        trimmed = backbone.embed(x)
    assert trimmed.shape == (2, 32)
    torch.testing.assert_close(trimmed, masked, atol=1e-5, rtol=1e-5)
    assert backbone.param_count() == expected_params
    assert {s.name: s.units for s in backbone.mask_sites()} == {k: len(v) for k, v in keep.items()}


def test_conv6_trimmed_in_two_steps_equals_one_step():
    torch.manual_seed(0)
    backbone = Wav2Vec2Backbone(VARIANTS["wav2vec2"])
    x = audio()
    first, second = torch.tensor([0, 2, 3, 5, 7, 8, 11, 12, 15]), torch.tensor([1, 2, 4, 8])  # second indexes first
    masks = {"conv6": UnitMask(backbone.site("conv6"))}
    with torch.no_grad():
        masks["conv6"].logits.fill_(-1.0)
        masks["conv6"].logits[first[second]] = 1.0
    masked = masked_embedding(backbone, masks, x)
    backbone.trim({"conv6": first})
    backbone.trim({"conv6": second})
    with torch.no_grad():
        torch.testing.assert_close(backbone.embed(x), masked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["wav2vec2", "wavlm"])
def test_save_and_rebuild_from_config_kept_units_and_state_dict(variant):
    torch.manual_seed(0)
    backbone = Wav2Vec2Backbone(VARIANTS[variant])
    keep = {n: m.kept() for n, m in random_masks(backbone, SCENARIOS["mixed"]).items()}
    backbone.trim(keep)
    config = json.loads(json.dumps(backbone.config))  # what gets saved must be JSON
    kept = {k: v.tolist() for k, v in keep.items()}
    rebuilt = build_backbone(config)
    rebuilt.trim({k: torch.tensor(v, dtype=torch.long) for k, v in kept.items()})
    rebuilt.load_state_dict(backbone.state_dict())
    x = audio()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.embed(x), backbone.embed(x), atol=0, rtol=0)


def test_site_table_counts():
    backbone = Wav2Vec2Backbone(VARIANTS["wav2vec2"])
    rows = {r["site"]: r for r in backbone.site_table()}
    assert sorted(rows) == sorted([f"conv{i}" for i in range(7)]
                                  + [f"layer{i}.{k}" for i in range(2) for k in ("attention", "ffn")])
    assert [rows[f"conv{i}"]["units"] for i in range(7)] == [16] * 7
    assert rows["layer0.attention"]["units"] == 4 and rows["layer1.ffn"]["units"] == 64
    hidden, head_dim = 32, 8
    # FFN unit: one intermediate_dense row + its bias, one output_dense column
    assert rows["layer0.ffn"]["params_per_unit"] == hidden + 1 + hidden
    # head: q, k, v rows (+ biases) and out_proj columns
    assert rows["layer1.attention"]["params_per_unit"] == 3 * (head_dim * hidden + head_dim) + head_dim * hidden
    # conv2 channel (no conv bias): its 16-input x 3-tap filter, and its input slice of conv3 (16 x 3)
    assert rows["conv2"]["params_per_unit"] == 16 * 3 + 16 * 3
    # conv0 channel: 10-tap filter, GroupNorm scale and shift, its input slice of conv1
    assert rows["conv0"]["params_per_unit"] == 10 + 2 + 16 * 3
    # conv6 channel: 16 x 2 filter, LayerNorm scale and shift; its projection column is swapped for
    # the shared zero-channel column on the first removal, so it saves nothing the first time
    assert rows["conv6"]["params_per_unit"] == 16 * 2 + 2


def test_wavlm_and_layer_norm_convs_offer_no_unexact_sites():
    wavlm = Wav2Vec2Backbone(VARIANTS["wavlm"])
    assert not [s for s in wavlm.mask_sites() if s.kind == "attention_heads"]
    layer_mode = Wav2Vec2Backbone(VARIANTS["wav2vec2-layer-norm"])
    assert not [s for s in layer_mode.mask_sites() if s.kind == "conv_channels"]


def test_builds_on_meta_device_and_disables_spec_augment():
    with torch.device("meta"):
        backbone = Wav2Vec2Backbone(VARIANTS["wav2vec2"])
    assert all(p.device.type == "meta" for p in backbone.parameters())
    cfg = backbone.hf_config
    assert (cfg.apply_spec_augment, cfg.mask_time_prob, cfg.layerdrop) == (False, 0.0, 0.0)
    assert not backbone.training


def test_from_pretrained_local_directory_matches_transformers(tmp_path):
    torch.manual_seed(0)
    reference = Wav2Vec2Model(Wav2Vec2Config(**TINY)).eval()
    reference.save_pretrained(tmp_path)
    backbone = load_backbone("wav2vec2-base", checkpoint=str(tmp_path), normalize=False)
    x = audio()
    with torch.no_grad():
        torch.testing.assert_close(backbone.embed(x), reference(x).last_hidden_state.mean(1))
    assert backbone.config["source"] == str(tmp_path) and backbone.embedding_dim == 32
    # the saved config rebuilds the same architecture
    rebuilt = build_backbone(json.loads(json.dumps(backbone.config)))
    rebuilt.load_state_dict(backbone.state_dict())


def test_from_pretrained_reads_ctc_checkpoints(tmp_path):
    # facebook/wav2vec2-base-960h is a Wav2Vec2ForCTC: "wav2vec2." prefix, an lm_head to ignore
    torch.manual_seed(0)
    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY)).eval()
    ctc.save_pretrained(tmp_path)
    backbone = Wav2Vec2Backbone.from_pretrained(str(tmp_path), model_type="wav2vec2", normalize=False)
    x = audio()
    with torch.no_grad():
        torch.testing.assert_close(backbone.embed(x), ctc.wav2vec2(x).last_hidden_state.mean(1))


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    Wav2Vec2Model(Wav2Vec2Config(**TINY)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    save_file({k.replace("feed_forward", "ffn"): v for k, v in state.items()}, weights, metadata={"format": "pt"})
    with pytest.raises(KeyError, match="missing keys.*feed_forward") as err:
        Wav2Vec2Backbone.from_pretrained(str(tmp_path), model_type="wav2vec2")
    assert "unexpected keys" in str(err.value) and "layers.0.ffn" in str(err.value)


def test_offline_hub_id_fails_fast_naming_the_repo():
    start = time.monotonic()
    with pytest.raises(OSError, match="facebook/wav2vec2-base.*place the files"):
        load_backbone("wav2vec2-base")
    assert time.monotonic() - start < 10


def test_wrong_sample_rate_and_short_audio_are_rejected():
    backbone = Wav2Vec2Backbone(VARIANTS["hubert"])
    with pytest.raises(ValueError, match="16000 Hz"):
        backbone.embed(audio(samples=8000), sample_rate=8000)
    with pytest.raises(ValueError, match="shorter than one frame"):
        backbone.embed(audio(samples=300))
    assert backbone.embed(audio(samples=400), sample_rate=16000).shape == (2, 32)

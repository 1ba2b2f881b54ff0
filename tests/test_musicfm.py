"""MusicFM backbone: checkpoint loading against a MusicFM-style reference, exact trimming, save/load.

No network and no real weights: a tiny random model with MusicFM25Hz's structure and attribute
names (written here from MusicFM's source) is saved as MusicFM saves it, {"state_dict": {"model." +
key: tensor}}, and read back through the same from_pretrained path as pretrained_msd.pt.
"""
import json
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from transformers import Wav2Vec2ConformerConfig
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from kwyn.backbones import BACKBONES, build_backbone, load_backbone
from kwyn.backbones.musicfm import MusicFMBackbone
from kwyn.heads import MLPHead
from kwyn.masks import UnitMask
from kwyn.model import TaskModel
from kwyn.trim import load_trimmed, save_trimmed
from trimming import random_masks, masked_embedding


TINY = dict(n_mels=16, conv_dim=8, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            conv_depthwise_kernel_size=7, rep_layer=2)
FULL_DEPTH = 3  # layers in the tiny "released" checkpoint; the representation is hidden_states[2]
STATS = {"melspec_2048_mean": 6.5, "melspec_2048_std": 18.0, "melspec_2048_cnt": 1000}
# per site: "none", "some" (random half) or "all" units kept; sites not named keep "some"
SCENARIOS = {
    "mixed": {"layer0.attention": "none", "layer1.ffn1": "none", "layer0.conv": "all", "layer1.ffn2": "all"},
    "empty-convs": {"layer0.conv": "none", "layer1.conv": "none", "layer1.attention": "all", "layer0.ffn2": "none"},
}


# -- a MusicFM25Hz look-alike: the released model's attribute names and forward --------------------
class _Res2d(nn.Module):
    def __init__(self, idim, odim, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(idim, odim, 3, padding=1, stride=stride), nn.BatchNorm2d(odim)
        self.conv2, self.bn2 = nn.Conv2d(odim, odim, 3, padding=1), nn.BatchNorm2d(odim)
        self.conv3, self.bn3 = nn.Conv2d(idim, odim, 3, padding=1, stride=stride), nn.BatchNorm2d(odim)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(self.bn3(self.conv3(x)) + out)


class _Subsampling(nn.Module):
    def __init__(self, hdim, odim, n_bands):
        super().__init__()
        self.conv = nn.Sequential(_Res2d(1, hdim, (2, 2)), _Res2d(hdim, hdim, (2, 2)))
        self.linear = nn.Linear(hdim * n_bands // 4, odim)

    def forward(self, x):
        x = self.conv(x.unsqueeze(1))  # b c f t -> b t (c f)
        return self.linear(x.flatten(1, 2).transpose(1, 2))


class _MelSTFT(nn.Module):
    def __init__(self, n_mels):
        super().__init__()
        self.melspec = torchaudio.transforms.MelSpectrogram(sample_rate=24000, n_fft=2048, hop_length=240,
                                                            n_mels=n_mels)
        self.amplitude_to_db = torchaudio.transforms.AmplitudeToDB()

    def forward(self, x):
        return self.amplitude_to_db(self.melspec(x))


class MusicFMReference(nn.Module):
    def __init__(self, stats):
        super().__init__()
        self.stat = stats
        self.preprocessor_melspec_2048 = _MelSTFT(TINY["n_mels"])
        self.quantizer_melspec_2048_0 = nn.Module()
        self.quantizer_melspec_2048_0.register_buffer("random_projection", torch.randn(4 * TINY["n_mels"], 16))
        self.quantizer_melspec_2048_0.register_buffer("codebook", torch.randn(64, 16))
        self.conv = _Subsampling(TINY["conv_dim"], TINY["hidden_size"], TINY["n_mels"])
        config = Wav2Vec2ConformerConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                         conv_depthwise_kernel_size=7, hidden_act="swish",
                                         position_embeddings_type="rotary", num_hidden_layers=FULL_DEPTH,
                                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
        config._attn_implementation = "eager"
        self.conformer = Wav2Vec2ConformerEncoder(config)
        self.linear = nn.Linear(32, 64)
        self.cls_token = nn.Parameter(torch.randn(32))
        for bn in self.modules():  # non-trivial running statistics, so that eval-mode BatchNorm matters
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.data.normal_(1, 0.2)
                bn.bias.data.normal_(0, 0.2)

    @torch.no_grad()
    def get_latent(self, wav, layer_ix):
        mel = self.preprocessor_melspec_2048(wav)[..., :-1]
        mel = (mel - self.stat["melspec_2048_mean"]) / self.stat["melspec_2048_std"]
        # transformers 4.x's hidden_states: [input to layer 0, output of layer 0, ...]
        outputs = []
        handles = [layer.register_forward_hook(lambda _m, _a, out: outputs.append(out))
                   for layer in self.conformer.layers]
        try:
            self.conformer(self.conv(mel))
        finally:
            for h in handles:
                h.remove()
        return outputs[layer_ix - 1]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(directory with pretrained_msd.pt + msd_stats.json, the reference model)."""
    torch.manual_seed(0)
    reference = MusicFMReference(STATS).eval()
    path = tmp_path_factory.mktemp("musicfm")
    state = {f"model.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 500}, path / "pretrained_msd.pt")
    (path / "msd_stats.json").write_text(json.dumps(STATS))
    return path, reference


def audio(batch=2, samples=24000, seed=1):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed)) * 0.3


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    backbone = MusicFMBackbone(TINY)
    for bn in backbone.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return backbone


# -- tests --------------------------------------------------------------------------------------
def test_checkpoint_loads_and_equals_musicfm_hidden_state(released):
    path, reference = released
    backbone = MusicFMBackbone.from_pretrained(str(path), **TINY)
    x = audio()
    with torch.no_grad():
        hidden = backbone.hidden_states(backbone.log_mel(x))
        embedding = backbone.embed(x)
    expected = reference.get_latent(x, layer_ix=TINY["rep_layer"])
    assert hidden.shape == (2, 25, 32)  # 1 s: 100 mel frames/s -> 25 tokens/s
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embedding, expected.mean(1), atol=1e-5, rtol=1e-5)
    assert len(backbone.conformer.layers) == TINY["rep_layer"]  # later layers are not built
    assert backbone.config["mel_mean"] == 6.5 and backbone.config["mel_std"] == 18.0
    # the saved config (stats included) rebuilds the same model
    rebuilt = build_backbone(json.loads(json.dumps(backbone.config)))
    rebuilt.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.embed(x), embedding, atol=0, rtol=0)


def test_plain_state_dict_file_and_explicit_stats(released, tmp_path):
    path, reference = released
    plain = {k: v for k, v in reference.state_dict().items() if k != "conformer.embed_positions.inv_freq"}
    torch.save(plain, tmp_path / "weights.pt")
    backbone = MusicFMBackbone.from_pretrained(str(tmp_path / "weights.pt"), stats=STATS, **TINY)
    x = audio(batch=1, samples=30000)
    with torch.no_grad():
        torch.testing.assert_close(backbone.hidden_states(backbone.log_mel(x)), reference.get_latent(x, 2),
                                   atol=1e-5, rtol=1e-5)


def test_checkpoint_with_wrong_keys_names_them(released, tmp_path):
    path, reference = released
    state = {k.replace("ffn1", "feed_forward1"): v for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "pretrained_msd.pt")
    with pytest.raises(KeyError, match="missing keys.*ffn1") as err:
        MusicFMBackbone.from_pretrained(str(tmp_path), stats=STATS, **TINY)
    assert "unexpected keys" in str(err.value) and "feed_forward1" in str(err.value)
    with pytest.raises(KeyError, match="conformer.layers.0.ffn1.intermediate_dense.weight"):  # mis-shaped
        MusicFMBackbone.from_pretrained(str(path), **{**TINY, "intermediate_size": 48})
    with pytest.raises(FileNotFoundError, match="msd_stats.json"):  # weights without their statistics
        MusicFMBackbone.from_pretrained(str(tmp_path / "pretrained_msd.pt"), **TINY)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        MusicFMBackbone.from_pretrained(str(tmp_path / "nowhere.pt"), **TINY)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_trimmed_model_equals_masked_model(scenario):
    backbone = tiny_backbone()
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
    torch.testing.assert_close(trimmed, masked, atol=1e-5, rtol=1e-5)
    assert backbone.param_count() == expected_params
    assert {s.name: s.units for s in backbone.mask_sites()} == {k: len(v) for k, v in keep.items()}


def test_one_head_kept_still_gets_the_rotary_rotation_of_all_heads():
    backbone = tiny_backbone()
    x = audio()
    masks = {"layer0.attention": UnitMask(backbone.site("layer0.attention")),
             "layer1.attention": UnitMask(backbone.site("layer1.attention"))}
    with torch.no_grad():
        masks["layer0.attention"].logits[0] = -1.0  # keep head 1 only
        masks["layer1.attention"].logits[1] = -1.0  # keep head 0 only
    masked = masked_embedding(backbone, masks, x)
    backbone.trim({k: m.kept() for k, m in masks.items()})
    assert [layer.self_attn.num_heads for layer in backbone.conformer.layers] == [1, 1]
    with torch.no_grad():
        torch.testing.assert_close(backbone.embed(x), masked, atol=1e-5, rtol=1e-5)


def test_save_and_load_trimmed_task_model(tmp_path):
    backbone = tiny_backbone()
    keep = {n: m.kept() for n, m in random_masks(backbone, SCENARIOS["mixed"]).items()}
    site_units = {s.name: s.units for s in backbone.mask_sites()}
    base_config = dict(backbone.config)
    backbone.trim(keep)
    model = TaskModel(backbone, MLPHead(32, 5, hidden=16)).eval()
    save_trimmed(model, {k: v.tolist() for k, v in keep.items()}, site_units, tmp_path / "model",
                 base_config=base_config)
    reloaded = load_trimmed(tmp_path / "model")
    x = audio()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=0, rtol=0)


def test_site_table_counts():
    backbone = tiny_backbone()
    rows = {r["site"]: r for r in backbone.site_table()}
    assert sorted(rows) == sorted(f"layer{i}.{k}" for i in range(2) for k in ("ffn1", "ffn2", "attention", "conv"))
    hidden, head, kernel = 32, 16, 7
    # FFN unit: an intermediate_dense row + its bias, an output_dense column
    assert rows["layer0.ffn1"]["params_per_unit"] == hidden + 1 + hidden
    # head: linear_q/k/v rows + biases, linear_out columns
    assert rows["layer1.attention"]["params_per_unit"] == 3 * (head * hidden + head) + head * hidden
    # conv channel: two pointwise_conv1 rows (GLU value and gate, no bias), the depthwise filter,
    # BatchNorm scale and shift, a pointwise_conv2 column
    assert rows["layer0.conv"]["params_per_unit"] == 2 * hidden + kernel + 2 + hidden
    assert [rows["layer0.conv"]["units"], rows["layer0.attention"]["units"]] == [32, 2]


def test_registered_default_is_the_released_size_up_to_layer_7():
    family, config = BACKBONES["musicfm"]
    assert family == "musicfm"
    with torch.device("meta"):
        backbone = build_backbone({"family": family, **config})
    sites = {s.name: s.units for s in backbone.mask_sites()}
    assert len(sites) == 28 and sites["layer6.ffn2"] == 4096 and sites["layer6.attention"] == 16
    assert sites["layer0.conv"] == 1024 and backbone.embedding_dim == 1024 and backbone.sample_rate == 24000


def test_offline_hub_fails_fast_naming_repo_and_files():
    start = time.monotonic()
    with pytest.raises(OSError, match="pretrained_msd.pt.*msd_stats.json.*minzwon/MusicFM"):
        load_backbone("musicfm")
    assert time.monotonic() - start < 10


def test_wrong_sample_rate_and_short_audio_are_rejected():
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="24000 Hz"):
        backbone.embed(audio(samples=8000), sample_rate=8000)
    with pytest.raises(ValueError, match="too short"):
        backbone.embed(audio(samples=1024))
    assert backbone.embed(audio(samples=1025), sample_rate=24000).shape == (2, 32)
    with pytest.raises(ValueError, match="unknown musicfm config keys"):
        MusicFMBackbone({"hidden": 3})

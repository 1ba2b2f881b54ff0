"""CNN14 (CLAP's audio encoder): checkpoint layouts, mask sites, exact trimming; tiny random models only."""
import copy
import time

import pytest
import torch

from kwyn.backbones import BACKBONES, build_backbone, load_backbone
from kwyn.backbones.cnn14 import Cnn14Backbone, WIDTHS
from kwyn.heads import MLPHead
from kwyn.masks import MaskSet
from kwyn.model import TaskModel
from kwyn.trim import load_trimmed, save_trimmed, trim_model
from trimming import random_keep

# channel widths and fc1 / projection sizes divided by 32; the front end stays CLAP's
TINY = {"widths": [w // 32 for w in WIDTHS], "fc1_dim": 64, "projection_dim": 32}
SITES = [f"block{i}.conv{j}" for i in range(1, 7) for j in (1, 2)]


def tiny_model(kind="msclap", seed=0) -> Cnn14Backbone:
    """A tiny CNN14 whose norms are random too, so that no channel is trivially zero or alike."""
    torch.manual_seed(seed)
    model = Cnn14Backbone({"kind": kind, **TINY})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.weight.normal_()
                module.bias.normal_(std=0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(std=0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def audio(model, seconds=1.0, batch=2):
    return 0.1 * model.example_input(seconds, batch)


def hand_count(widths, fc1=64, proj=32, window=1024, mel=64):
    """msclap-kind parameters counted by hand."""
    front = 2 * (window // 2 + 1) * window + (window // 2 + 1) * mel + 2 * mel  # DFT real/imag, mel matrix, bn0
    ins = [1] + widths[:-1]
    blocks = sum(9 * i * w + 9 * w * w + 4 * w for i, w in zip(ins, widths))  # 2 convs (no bias), 2 BNs
    return front + blocks + widths[-1] * fc1 + fc1 + fc1 * proj + proj * proj + 2 * proj


def test_full_size_model_matches_hand_count_and_kinds():
    with torch.device("meta"):  # shapes only, no 80 M random numbers
        msclap, laion = Cnn14Backbone({"kind": "msclap"}), Cnn14Backbone({"kind": "laion"})
    assert msclap.param_count() == hand_count(WIDTHS, fc1=2048, proj=1024)
    assert (msclap.sample_rate, msclap.embedding_dim) == (44100, 1024)
    assert (laion.sample_rate, laion.embedding_dim) == (48000, 512)
    assert [s.units for s in msclap.mask_sites()] == [w for w in WIDTHS for _ in (1, 2)]
    assert [s.name for s in msclap.mask_sites()] == SITES
    assert BACKBONES["clap-cnn14"] == ("cnn14", {"kind": "msclap"})
    assert BACKBONES["laion-clap-cnn14"] == ("cnn14", {"kind": "laion"})


def test_site_table_params_per_unit_by_hand():
    rows = {r["site"]: r["params_per_unit"] for r in tiny_model().site_table()}
    w = TINY["widths"]
    # block3.conv1: its 3x3 filter over block 2's channels, its BN affine, its column in block3.conv2
    assert rows["block3.conv1"] == 9 * w[1] + 2 + 9 * w[2]
    # block6.conv2: its filter, its BN affine, its input column of fc1
    assert rows["block6.conv2"] == 9 * w[5] + 2 + TINY["fc1_dim"]


def masked_and_trimmed(model, keep):
    masked = copy.deepcopy(model)
    masks = MaskSet(masked.mask_sites())
    with torch.no_grad():
        for name, mask in masks.by_site().items():
            mask.logits.fill_(-1.0)
            mask.logits[keep[name]] = 1.0
    for mask in masks.values():
        mask.attach(masked)
    trimmed = trim_model(copy.deepcopy(model), {k: v.tolist() for k, v in keep.items()})
    return masked, trimmed


@pytest.mark.parametrize("kind", ["msclap", "laion"])
@pytest.mark.parametrize("empty,full", [((), ()), (("block3.conv1", "block6.conv2"), ("block1.conv1",)),
                                        (("block1.conv2", "block5.conv2"), ("block6.conv1", "block2.conv2")),
                                        (tuple(SITES), ())])
def test_trimmed_equals_masked(kind, empty, full):
    model = tiny_model(kind)
    keep = random_keep(model, torch.Generator().manual_seed(len(empty) * 10 + len(full)), empty, full,
                       random_count=True)
    masked, trimmed = masked_and_trimmed(model, keep)
    x = audio(model)
    with torch.no_grad():
        expected = masked.embed(x)
        torch.testing.assert_close(trimmed.embed(x), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(expected, model.embed(x), atol=1e-3)  # the masks did change the output
    assert trimmed.param_count() == model.trimmed_param_count(keep) < model.param_count()
    for name in empty:
        block, conv = name.split(".")
        assert getattr(getattr(trimmed, f"conv_block{block[5:]}"), conv).out_channels == 0


def test_keeping_every_unit_changes_nothing():
    model = tiny_model()
    keep = {s.name: torch.arange(s.units) for s in model.mask_sites()}
    masked, trimmed = masked_and_trimmed(model, keep)
    x = audio(model)
    with torch.no_grad():
        torch.testing.assert_close(trimmed.embed(x), model.embed(x), atol=0, rtol=0)
    assert trimmed.param_count() == model.param_count()


def test_trim_rejects_bad_unit_indices():
    model = tiny_model()
    with pytest.raises(KeyError, match="unknown mask sites"):
        model.trim({"block7.conv1": torch.arange(3)})
    with pytest.raises(ValueError, match="out of range"):
        model.trim({"block2.conv1": torch.tensor([TINY["widths"][1]])})


def test_save_and_load_trimmed_round_trip(tmp_path):
    model = tiny_model("laion")
    keep = random_keep(model, torch.Generator().manual_seed(3), empty=("block4.conv2",), random_count=True)
    masked, trimmed = masked_and_trimmed(model, keep)
    head = MLPHead(trimmed.embedding_dim, 5)
    save_trimmed(TaskModel(trimmed, head), {k: v.tolist() for k, v in keep.items()},
                 {s.name: s.units for s in model.mask_sites()}, tmp_path / "model", base_config=model.config)
    reloaded = load_trimmed(tmp_path / "model")
    x = audio(model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), head(masked.embed(x)), atol=1e-5, rtol=1e-5)
    assert reloaded.backbone.sample_rate == 48000 and reloaded.backbone.conv_block4.conv2.out_channels == 0
    assert build_backbone(model.config).config == model.config


# -- checkpoints in the two on-disk layouts -------------------------------------------------
def msclap_file(model, path):
    """Microsoft CLAP's layout: {"model": CLAP state_dict}, text encoder and AudioSet classifier included."""
    own = model.state_dict()
    state = {f"audio_encoder.base.{k}": v for k, v in own.items() if not k.startswith("projection.")}
    state |= {f"audio_encoder.projection.{k.removeprefix('projection.')}": v for k, v in own.items()
              if k.startswith("projection.")}
    state |= {"audio_encoder.base.fc_audioset.weight": torch.randn(527, TINY["fc1_dim"]),
              "audio_encoder.base.fc_audioset.bias": torch.randn(527),
              "caption_encoder.base.embeddings.word_embeddings.weight": torch.randn(30, 8),
              "caption_encoder.projection.linear1.weight": torch.randn(32, 8),
              "logit_scale": torch.tensor(2.0)}
    torch.save({"model": state}, path)
    return path


def laion_file(model, path):
    """LAION-CLAP's layout: {"state_dict": DDP-prefixed CLAP state_dict, "epoch": ...}, text branch included."""
    state = {f"module.audio_branch.{k}": v for k, v in model.state_dict().items() if not k.startswith("projection.")}
    state |= {f"module.audio_{k}": v for k, v in model.state_dict().items() if k.startswith("projection.")}
    state |= {"module.audio_branch.fc_audioset.weight": torch.randn(527, TINY["fc1_dim"]),
              "module.text_branch.embeddings.word_embeddings.weight": torch.randn(30, 8),
              "module.text_projection.0.weight": torch.randn(32, 8),
              "module.audio_transform.sequential.0.weight": torch.randn(32, 32),
              "module.logit_scale_a": torch.tensor(2.0), "module.logit_scale_t": torch.tensor(2.0)}
    torch.save({"epoch": 3, "state_dict": state}, path)
    return path


@pytest.mark.parametrize("name,kind,writer", [("clap-cnn14", "msclap", msclap_file),
                                              ("laion-clap-cnn14", "laion", laion_file)])
def test_both_checkpoint_layouts_load(tmp_path, name, kind, writer):
    source = tiny_model(kind, seed=1)
    path = writer(source, tmp_path / "CLAP_weights_2022.pth")
    for checkpoint in (path, tmp_path) if kind == "msclap" else (path,):  # msclap: the file or its directory
        loaded = load_backbone(name, checkpoint=str(checkpoint), **TINY)
        x = audio(source)
        with torch.no_grad():
            torch.testing.assert_close(loaded.embed(x, sample_rate=source.sample_rate), source.embed(x), atol=0, rtol=0)
        assert not loaded.training and loaded.config == source.config


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    path = msclap_file(tiny_model(), tmp_path / "ok.pth")
    raw = torch.load(path, weights_only=True)
    raw["model"]["audio_encoder.base.conv_block2.convX.weight"] = raw["model"].pop(
        "audio_encoder.base.conv_block2.conv1.weight")
    torch.save(raw, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"missing keys: \['conv_block2.conv1.weight'\]"
                                       r"[\s\S]*unexpected keys: \['conv_block2.convX.weight'\]"):
        load_backbone("clap-cnn14", checkpoint=str(tmp_path / "bad.pth"), **TINY)
    # a LAION file read as msclap: its audio keys are unexpected, ours missing
    with pytest.raises(KeyError, match=r"missing keys: \[[\s\S]*unexpected keys: \['audio_branch.bn0.bias'"):
        load_backbone("clap-cnn14", checkpoint=str(laion_file(tiny_model("laion"), tmp_path / "l.pth")), **TINY)


def test_missing_weights_fail_fast_offline(tmp_path):
    if _in_hub_cache():
        pytest.skip("the real msclap weights are in the hub cache here")
    start = time.monotonic()
    with pytest.raises(OSError, match=r"CLAP_weights_2022\.pth[\s\S]*microsoft/msclap[\s\S]*pass that path"):
        Cnn14Backbone.from_pretrained(None, kind="msclap", **TINY)
    assert time.monotonic() - start < 10
    with pytest.raises(FileNotFoundError, match="PANN-14 checkpoint"):
        load_backbone("laion-clap-cnn14", **TINY)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_backbone("clap-cnn14", checkpoint=str(tmp_path / "nowhere.pth"), **TINY)


def _in_hub_cache() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache("microsoft/msclap", "CLAP_weights_2022.pth"), str)


def test_wrong_rate_and_short_audio_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="expects 44100 Hz audio, got 48000 Hz"):
        model.embed(audio(model), sample_rate=48000)
    with pytest.raises(ValueError, match="too short"):
        model.embed(torch.randn(1, model.min_samples() - 1))
    with torch.no_grad():
        assert model.embed(torch.randn(1, model.min_samples())).shape == (1, TINY["projection_dim"])

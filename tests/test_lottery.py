"""Structured lottery tickets: fixed masks, unit scores, global pruning rounds, rewinding."""
import copy

import pytest
import torch
from torch import nn

from kwyn.backbones import load_backbone
from kwyn.backbones.crepe import CrepeBackbone
from kwyn.heads import MLPHead
from kwyn.lottery import (FixedMaskSet, activation_scores, gradient_scores, magnitude_scores, prune_round,
                          rewind_state, snapshot_state, unit_scores)
from kwyn.model import TaskModel
from kwyn.sites import MaskSite
from kwyn.trim import trim_model


def audio(batch=2, samples=1024 + 160, seed=0):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def all_kept(backbone):
    return {s.name: torch.arange(s.units) for s in backbone.mask_sites()}


def expected_removed(scores, kept, n_remove):
    """The n_remove (site, unit) pairs of lowest mean-normalised score, ranked by hand."""
    pool = []
    for order, (name, idx) in enumerate(kept.items()):
        s = scores[name][idx].double()
        s = s / s.mean()
        pool += [(float(v), order, int(u), name) for v, u in zip(s, idx)]
    return {(name, u) for _, _, u, name in sorted(pool)[:n_remove]}


def removed_pairs(before, after):
    return {(name, int(u)) for name, idx in before.items() for u in idx.tolist() if u not in set(after[name].tolist())}


def test_prune_round_removes_the_lowest_share_then_share_of_the_rest():
    backbone = load_backbone("crepe-tiny")
    scores = magnitude_scores(backbone)
    kept0 = all_kept(backbone)
    total = sum(v.numel() for v in kept0.values())
    assert total == 272

    kept1 = prune_round(scores, kept0, share=0.2)
    n1 = round(0.2 * total)
    assert sum(v.numel() for v in kept1.values()) == total - n1 == 218
    assert removed_pairs(kept0, kept1) == expected_removed(scores, kept0, n1)
    # removal is not uniform per site: the global ranking decides
    assert len({v.numel() / s.units for v, s in zip(kept1.values(), backbone.mask_sites())}) > 1

    kept2 = prune_round(scores, kept1, share=0.2)
    n2 = round(0.2 * 218)
    assert sum(v.numel() for v in kept2.values()) == 218 - n2 == 174
    assert removed_pairs(kept1, kept2) == expected_removed(scores, kept1, n2)
    for name in kept2:  # only kept units are ranked: nothing comes back
        assert set(kept2[name].tolist()) <= set(kept1[name].tolist())
        assert torch.equal(kept2[name], kept2[name].sort().values)


def test_prune_round_ranks_globally_and_breaks_ties_deterministically():
    scores = {"a": torch.tensor([1.0, 1.0, 1.0, 1.0]), "b": torch.tensor([0.0, 0.0, 4.0, 4.0])}
    kept = {"a": torch.arange(4), "b": torch.arange(4)}
    # normalised: a -> 1, 1, 1, 1; b -> 0, 0, 2, 2
    assert {k: v.tolist() for k, v in prune_round(scores, kept, 0.25).items()} == {"a": [0, 1, 2, 3], "b": [2, 3]}
    # ties: earlier site first, then lower unit index
    assert {k: v.tolist() for k, v in prune_round(scores, kept, 0.5).items()} == {"a": [2, 3], "b": [2, 3]}
    # raw ranking without normalisation; a site may lose every unit
    raw = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.0, 20.0])}
    out = prune_round(raw, {"a": torch.arange(2), "b": torch.arange(2)}, 0.5, normalize=False)
    assert out["a"].numel() == 0 and out["b"].tolist() == [0, 1]
    out = prune_round(raw, {"a": torch.arange(2), "b": torch.arange(2)}, 0.5)
    assert {k: v.tolist() for k, v in out.items()} == {"a": [1], "b": [1]}


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_bad_share_raises(share):
    with pytest.raises(ValueError, match="share"):
        prune_round({"a": torch.ones(3)}, {"a": torch.arange(3)}, share)


def test_trimmed_equals_masked_after_rounds():
    backbone = load_backbone("crepe-tiny")
    fresh = copy.deepcopy(backbone)
    masks = FixedMaskSet(backbone.mask_sites())
    masks.attach(backbone)
    assert list(masks.parameters()) == [] and masks.kept_count == masks.total_units == 272
    batches = [audio(seed=i) for i in range(2)]
    for method in ("magnitude", "activation"):  # two rounds, the second scored on the masked model
        scores = unit_scores(method, backbone, batches=batches)
        masks.set_kept(prune_round(scores, masks.kept_units(), 0.2))
    kept = masks.kept_units()
    assert masks.kept_count == 174
    x = audio(batch=3, samples=2048, seed=7)
    with torch.no_grad():
        masked = backbone.embed(x)
        trimmed = trim_model(fresh, {k: v.tolist() for k, v in kept.items()})
        torch.testing.assert_close(trimmed.embed(x), masked, atol=1e-5, rtol=1e-5)
        assert trimmed.param_count() == backbone.trimmed_param_count(kept) < backbone.param_count()
        masks.detach()
        assert not torch.allclose(backbone.embed(x), masked, atol=1e-5)  # the masks did act


def test_fixed_mask_set_from_kept_round_trips_and_escapes_dotted_names():
    sites = [MaskSite("layer0.ffn", "ffn_units", 5, "fc", "input", "channels_last"),
             MaskSite("conv", "conv_channels", 3, "conv", "output", "channels_first")]
    masks = FixedMaskSet(sites, {"layer0.ffn": torch.tensor([4, 1])})
    assert masks["layer0.ffn"].kept().tolist() == [1, 4] and masks["conv"].kept().tolist() == [0, 1, 2]
    assert "layer0__ffn.keep" in masks.state_dict()
    with pytest.raises(KeyError, match="nope"):
        masks.set_kept({"nope": torch.arange(1)})
    with pytest.raises(ValueError, match="out of range"):
        masks.set_kept({"conv": torch.tensor([3])})


class Toy(nn.Module):
    """Hand-set layers for the score checks: a Linear read by heads, a Conv1d read by channels."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 2, bias=False)
        self.conv = nn.Conv1d(3, 2, 2, bias=False)
        self.bn = nn.BatchNorm1d(3)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5, 0.0, -1.0], [0.0, 1.0, -1.0, 2.0, 2.0, 2.0]]))
            self.conv.weight.copy_(torch.tensor([[[1.0, -2.0], [0.0, 3.0], [-4.0, 0.5]],
                                                 [[2.0, 2.0], [-1.0, 0.0], [0.0, -1.0]]]))
            self.bn.weight.copy_(torch.tensor([-3.0, 0.25, 2.0]))

    def mask_sites(self):
        return [MaskSite("attention", "attention_heads", 2, "proj", "input", "heads"),
                MaskSite("conv.in", "conv_channels", 3, "conv", "input", "channels_first"),
                MaskSite("conv.out", "conv_channels", 2, "conv", "output", "channels_first"),
                MaskSite("bn", "conv_channels", 3, "bn", "output", "channels_first")]

    def forward(self, x):  # (B, 3, T)
        h = self.conv(self.bn(x))
        return self.proj(h.transpose(1, 2).repeat(1, 1, 3))


def test_magnitude_scores_equal_hand_computed_l1_norms():
    scores = magnitude_scores(Toy())
    # heads of 3 columns each: |1|+|-2|+|3|+|0|+|1|+|-1| and |.5|+|0|+|-1|+|2|+|2|+|2|
    torch.testing.assert_close(scores["attention"], torch.tensor([8.0, 7.5]))
    torch.testing.assert_close(scores["conv.in"], torch.tensor([1 + 2 + 2 + 2, 0 + 3 + 1 + 0, 4 + 0.5 + 0 + 1]))
    torch.testing.assert_close(scores["conv.out"], torch.tensor([1 + 2 + 0 + 3 + 4 + 0.5, 2 + 2 + 1 + 0 + 0 + 1.0]))
    torch.testing.assert_close(scores["bn"], torch.tensor([3.0, 0.25, 2.0]))  # |gamma|


def test_magnitude_scores_on_crepe_are_batchnorm_gammas():
    backbone = load_backbone("crepe-tiny")
    scores = magnitude_scores(backbone)
    for i in range(1, 7):
        torch.testing.assert_close(scores[f"conv{i}"], getattr(backbone, f"conv{i}_BN").weight.detach().abs())


def test_magnitude_needs_a_weight_layer_or_batches():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU())

        def mask_sites(self):
            return [MaskSite("conv0", "conv_channels", 4, "block", "output", "channels_first")]

        def forward(self, x):
            return self.block(x)

    model = Wrapped()
    with pytest.raises(ValueError, match=r"conv0.*Sequential"):
        magnitude_scores(model)
    x = torch.randn(2, 1, 8)
    with pytest.warns(UserWarning, match="conv0"):
        scores = magnitude_scores(model, batches=[x])
    torch.testing.assert_close(scores["conv0"], model.block(x).abs().mean(dim=(0, 2)))


def test_activation_score_of_a_zeroed_unit_is_zero():
    backbone = load_backbone("crepe-tiny")
    with torch.no_grad():
        backbone.conv2_BN.weight[3] = 0.0
        backbone.conv2_BN.bias[3] = 0.0
    scores = activation_scores(backbone, None, [audio(seed=1), audio(seed=2)])
    assert scores["conv2"][3] == 0
    assert (scores["conv2"][torch.arange(16) != 3] > 0).all()
    assert all((s >= 0).all() and s.shape == (site.units,)
               for s, site in zip(scores.values(), backbone.mask_sites()))
    # units held at zero by an attached mask score 0 too
    masks = FixedMaskSet(backbone.mask_sites(), {"conv5": torch.arange(0, 32, 2)})
    masks.attach(backbone)
    masked = activation_scores(backbone, [backbone.site("conv5")], [audio(seed=1)])
    assert (masked["conv5"][1::2] == 0).all() and (masked["conv5"][0::2] > 0).all()


def test_gradient_scores_are_nonnegative_and_zero_for_a_unit_without_effect():
    torch.manual_seed(0)
    backbone = load_backbone("crepe-tiny")
    with torch.no_grad():
        backbone.conv4.weight[:, 5] = 0.0  # conv3's channel 5 is read by nobody
    model = TaskModel(backbone, MLPHead(backbone.embedding_dim, 3, hidden=16))
    batches = [(audio(seed=i), torch.tensor([0, 2])) for i in range(2)]

    def loss_fn(m, batch):
        x, y = batch
        return nn.functional.cross_entropy(m(x), y)

    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = gradient_scores(model, None, loss_fn, batches)
    assert all((s >= 0).all() for s in scores.values())
    assert scores["conv3"][5] == 0
    assert (scores["conv3"] > 0).sum() >= 12 and all(s.sum() > 0 for s in scores.values())
    # only the temporary scales were differentiated: weights, grads and hooks untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params_before.items())
    assert all(p.grad is None for p in model.parameters())
    assert not backbone.conv3_BN._forward_hooks

    # the score is |d loss / d unit scale|: check one unit against a central difference (in float64)
    model64 = copy.deepcopy(model).double()
    batch64 = [(batches[0][0].double(), batches[0][1])]
    site = backbone.site("conv6")
    unit = int(scores["conv6"].argmax())

    def loss_at(scale):
        values = torch.ones(site.units, dtype=torch.float64)
        values[unit] = scale
        hook = model64.backbone.conv6_BN.register_forward_hook(lambda _m, _a, out: site.scale_units(out, values))
        try:
            with torch.no_grad():
                return float(loss_fn(model64, batch64[0]))
        finally:
            hook.remove()

    one = float(gradient_scores(model64, [site], loss_fn, batch64)["conv6"][unit])
    fd = abs(loss_at(1 + 1e-5) - loss_at(1 - 1e-5)) / 2e-5
    assert fd > 0 and one == pytest.approx(fd, rel=1e-4)


def test_unit_scores_rejects_unknown_method():
    with pytest.raises(ValueError, match="magnitude"):
        unit_scores("random", CrepeBackbone({"capacity": "tiny"}))


def test_rewind_restores_early_weights_and_keeps_masks():
    torch.manual_seed(0)
    backbone = load_backbone("crepe-tiny")
    model = TaskModel(backbone, MLPHead(backbone.embedding_dim, 3, hidden=16))
    masks = FixedMaskSet(backbone.mask_sites())
    masks.attach(model)
    early = snapshot_state(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = audio(seed=3), torch.tensor([1, 2])
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert not torch.equal(model.head[0].weight, early["head.0.weight"])  # snapshot did not alias
    masks.set_kept(prune_round(magnitude_scores(backbone), masks.kept_units(), 0.2))
    kept = masks.kept_units()
    rewind_state(model, early, masks)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in early.items())
    assert all(torch.equal(kept[k], v) for k, v in masks.kept_units().items())
    # the rewound, masked model equals its trimmed copy: pretrained backbone (the early state) + early head
    head = MLPHead(backbone.embedding_dim, 3, hidden=16)
    head.load_state_dict({k[len("head."):]: v for k, v in early.items() if k.startswith("head.")})
    trimmed = TaskModel(trim_model(load_backbone("crepe-tiny"), kept), head)
    with torch.no_grad():
        torch.testing.assert_close(trimmed(x), model(x), atol=1e-5, rtol=1e-5)


def test_wav2vec2_conv_blocks_fall_back_to_activation_scores():
    """wav2vec2's conv sites hook a conv -> norm -> GELU block (no weight of its own); the others hook Linears."""
    from kwyn.backbones.wav2vec2 import Wav2Vec2Backbone

    torch.manual_seed(0)
    backbone = Wav2Vec2Backbone({"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 4, "intermediate_size": 64, "conv_dim": (16,) * 7,
                                 "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "num_conv_pos_embeddings": 16,
                                 "num_conv_pos_embedding_groups": 4}).eval()
    with pytest.raises(ValueError, match=r"conv0.*Wav2Vec2GroupNormConvLayer"):
        magnitude_scores(backbone)
    x = [backbone.example_input(0.1, 2)]
    with pytest.warns(UserWarning, match="conv0"):
        scores = magnitude_scores(backbone, batches=x)
    activations = activation_scores(backbone, None, x)
    layer = backbone.model.encoder.layers[0]
    heads = layer.attention.out_proj.weight.detach().abs().view(32, 4, 8).sum(dim=(0, 2))
    torch.testing.assert_close(scores["layer0.attention"], heads)
    torch.testing.assert_close(scores["layer0.ffn"], layer.feed_forward.output_dense.weight.detach().abs().sum(0))
    for i in range(7):
        torch.testing.assert_close(scores[f"conv{i}"], activations[f"conv{i}"])

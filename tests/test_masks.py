import math

import pytest
import torch

from kwyn.masks import (MaskSet, UnitMask, authors_code_sparsity_loss, paper_sparsity_loss, sparsity_loss,
                        ste_binary)
from kwyn.sites import MaskSite


def test_ste_forward_is_rounded_sigmoid_and_backward_is_identity():
    logits = torch.tensor([-2.0, -0.1, 0.0, 0.1, 3.0], requires_grad=True)
    values = ste_binary(logits)
    assert values.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # round(0.5) = 0, as the authors' code
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0])
    values.backward(upstream)
    assert torch.equal(logits.grad, upstream)


def test_masks_start_with_every_unit_on():
    site = MaskSite("s", "ffn_units", 5, "m", "input", "channels_last")
    assert UnitMask(site).kept().tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="init_logit"):
        UnitMask(site, init_logit=-1.0)


def test_paper_loss_matches_hand_computation():
    m1, m2, t = torch.tensor([1.0, -1.0]), torch.tensor([0.5]), 0.3
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = (math.sqrt(s(0.7) ** 2 + s(-1.3) ** 2) + math.sqrt(s(0.2) ** 2)) / 3
    assert paper_sparsity_loss([m1, m2], t).item() == pytest.approx(expected, rel=1e-6)
    assert sparsity_loss("paper", [m1, m2], t).item() == pytest.approx(expected, rel=1e-6)


def test_authors_code_loss_matches_hand_computation():
    m1, m2, t = torch.tensor([1.0, -1.0]), torch.tensor([0.5]), 0.5
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    groups = [(s(1.0) + s(-1.0)) / 2, s(0.5)]  # each group weighs the same whatever its size
    expected = (sum(groups) / 2 - t) ** 2
    assert authors_code_sparsity_loss([m1, m2], t).item() == pytest.approx(expected, rel=1e-5)


def test_unknown_loss_name_lists_known_ones():
    with pytest.raises(ValueError, match="paper, authors_code"):
        sparsity_loss("l1", [torch.zeros(2)], 0.5)


@pytest.mark.parametrize("layout,shape", [("channels_first", (2, 3, 5)), ("channels_last", (2, 5, 3)),
                                          ("heads", (2, 5, 6))])
def test_mask_zeroes_exactly_the_dropped_units(layout, shape):
    site = MaskSite("s", "attention_heads" if layout == "heads" else "conv_channels", 3, "lin", "input", layout)
    mask = UnitMask(site)
    with torch.no_grad():
        mask.logits[1] = -1.0
    x = torch.randn(shape)
    y = mask.modulate(x)
    if layout == "channels_first":
        dropped, kept = y[:, 1], (y[:, 0], x[:, 0])
    elif layout == "channels_last":
        dropped, kept = y[..., 1], (y[..., 0], x[..., 0])
    else:  # 3 heads of size 2 along the last dim
        dropped, kept = y[..., 2:4], (y[..., :2], x[..., :2])
    assert torch.all(dropped == 0)
    assert torch.equal(*kept)


def test_maskset_hooks_reach_the_module_and_can_be_removed():
    lin = torch.nn.Sequential(torch.nn.Linear(4, 3))
    site = MaskSite("out", "ffn_units", 3, "0", "output", "channels_last")
    masks = MaskSet([site])
    with torch.no_grad():
        masks["out"].logits[0] = -5
    handle = masks["out"].attach(lin)
    assert torch.all(lin(torch.randn(2, 4))[:, 0] == 0)
    handle.remove()
    assert masks.kept_count == 2 and masks.total_units == 3


def test_maskset_accepts_dotted_site_names():
    sites = [MaskSite("layer0.ffn", "ffn_units", 4, "a", "input", "channels_last"),
             MaskSite("layer0.attention", "attention_heads", 2, "b", "input", "heads")]
    masks = MaskSet(sites)
    with torch.no_grad():
        masks["layer0.ffn"].logits[2] = -1.0
    assert masks.kept_units()["layer0.ffn"].tolist() == [0, 1, 3]
    assert sorted(masks.by_site()) == ["layer0.attention", "layer0.ffn"]

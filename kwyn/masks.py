"""Learnable binary unit masks, their straight-through estimator and the sparsity losses.

A mask holds one logit per removable unit. Its forward value is round(sigmoid(logit))
(0 or 1); its backward pass hands the incoming gradient to the logit unchanged
(straight-through estimator, as the authors' code does). Masks are attached to a
backbone through hooks at the backbone's mask sites, so no model code is rewritten.
"""
from __future__ import annotations

import torch
from torch import nn

from kwyn.sites import MaskSite, SiteModulation

SPARSITY_LOSSES = ("paper", "authors_code")


def ste_binary(logits: torch.Tensor) -> torch.Tensor:
    """round(sigmoid(logits)) forward; identity gradient to the logits backward.

    torch.round rounds half to even, so a logit of exactly 0 (sigmoid 0.5) gives 0,
    as in the authors' code.
    """
    hard = torch.round(torch.sigmoid(logits))
    return logits + (hard - logits).detach()


class UnitMask(SiteModulation):
    """A binary keep/drop mask over the units of one site."""

    def __init__(self, site: MaskSite, init_logit: float = 1.0):
        super().__init__(site)
        if init_logit <= 0:
            raise ValueError(f"init_logit must be > 0 so every unit starts on, got {init_logit}")
        self.logits = nn.Parameter(torch.full((site.units,), float(init_logit)))

    def unit_values(self) -> torch.Tensor:
        return ste_binary(self.logits)

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.scale_units(x, self.unit_values())

    def kept(self) -> torch.Tensor:
        """Indices of the units this mask keeps."""
        return torch.nonzero(torch.sigmoid(self.logits.detach()) > 0.5).flatten()


def module_key(site_name: str) -> str:
    """nn.ModuleDict keys cannot contain '.', site names (e.g. 'layer3.ffn') can."""
    return site_name.replace(".", "__")


class MaskSet(nn.ModuleDict):
    """One UnitMask per site of a backbone; index it by site name."""

    def __init__(self, sites: list[MaskSite], init_logit: float = 1.0):
        super().__init__({module_key(s.name): UnitMask(s, init_logit) for s in sites})

    def __getitem__(self, site_name: str) -> UnitMask:
        return super().__getitem__(module_key(site_name))

    def by_site(self) -> dict[str, UnitMask]:
        return {mask.site.name: mask for mask in self.values()}

    def kept_units(self) -> dict[str, torch.Tensor]:
        return {name: mask.kept() for name, mask in self.by_site().items()}

    def logits(self) -> list[torch.Tensor]:
        return [mask.logits for mask in self.values()]

    @property
    def total_units(self) -> int:
        return sum(m.logits.numel() for m in self.values())

    @property
    def kept_count(self) -> int:
        return sum(int(m.kept().numel()) for m in self.values())


def paper_sparsity_loss(logits: list[torch.Tensor], t: float) -> torch.Tensor:
    """L_S = sum_i ||sigmoid(m_i - t)||_2 / N, N the total number of units (paper, eq. in II.D)."""
    n_units = sum(m.numel() for m in logits)
    return sum(torch.linalg.vector_norm(torch.sigmoid(m - t)) for m in logits) / n_units


def authors_code_sparsity_loss(logits: list[torch.Tensor], t: float) -> torch.Tensor:
    """(mean over groups of mean_i sigmoid(m_gi) - t)^2, as the authors' public code computes it.

    Every mask group weighs the same whatever its size; lambda (100 there) multiplies it outside.
    """
    group_means = torch.stack([torch.sigmoid(m).mean() for m in logits])
    return (group_means.mean() - t) ** 2


def sparsity_loss(name: str, logits: list[torch.Tensor], t: float) -> torch.Tensor:
    if name == "paper":
        return paper_sparsity_loss(logits, t)
    if name == "authors_code":
        return authors_code_sparsity_loss(logits, t)
    raise ValueError(f"unknown sparsity loss {name!r}; known: {', '.join(SPARSITY_LOSSES)}")

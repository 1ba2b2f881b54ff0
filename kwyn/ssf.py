"""SSF baseline: scale-and-shift of every unit at the mask sites (Lian et al. 2022), no reduction.

The paper compares trimming with SSF tuned at the same sites as the masks: the encoder stays
frozen and each unit u of a site becomes gamma_u * x_u + beta_u (gamma from 1, beta from 0),
trained with the head. Nothing is removed, so its cost is the full encoder's.
"""
from __future__ import annotations

import torch
from torch import nn

from kwyn.masks import module_key
from kwyn.sites import MaskSite, SiteModulation


class ScaleShift(SiteModulation):
    def __init__(self, site: MaskSite):
        super().__init__(site)
        self.scale = nn.Parameter(torch.ones(site.units))
        self.shift = nn.Parameter(torch.zeros(site.units))

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.shift_units(self.site.scale_units(x, self.scale), self.shift)


class ScaleShiftSet(nn.ModuleDict):
    """One ScaleShift per site, keyed like kwyn.masks.MaskSet."""

    def __init__(self, sites: list[MaskSite]):
        super().__init__({module_key(s.name): ScaleShift(s) for s in sites})

    def attach(self, backbone: nn.Module) -> None:
        for modulation in self.values():
            modulation.attach(backbone)

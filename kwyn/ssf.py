"""SSF baseline: scale-and-shift of every unit at the mask sites (Lian et al. 2022), no reduction.

The paper compares trimming with SSF tuned at the same sites as the masks: the encoder stays
frozen and each unit u of a site becomes gamma_u * x_u + beta_u (gamma from 1, beta from 0),
trained with the head. Nothing is removed, so its cost is the full encoder's.
"""
from __future__ import annotations

import torch
from torch import nn

from kwyn.sites import MaskSite, SiteModulation, SiteModulationSet


class ScaleShift(SiteModulation):
    def __init__(self, site: MaskSite):
        super().__init__(site)
        self.scale = nn.Parameter(torch.ones(site.units))
        self.shift = nn.Parameter(torch.zeros(site.units))

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.shift_units(self.site.scale_units(x, self.scale), self.shift)


class ScaleShiftSet(SiteModulationSet):
    """One ScaleShift per site. Nothing is removed, and the trained scale-and-shift stays in the trimmed model."""
    kind = "ssf"
    kept_at_trim = True

    def __init__(self, sites: list[MaskSite]):
        super().__init__([ScaleShift(s) for s in sites])

    def param_groups(self, train) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": train.lr, "name": "ssf"}]

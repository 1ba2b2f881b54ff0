"""HardConcrete unit masks with a Lagrangian on the expected model size (Louizos et al. 2018; as DPHuBERT prunes).

Each unit u of a site gets a gate z_u in [0, 1] drawn from a stretched, clipped concrete distribution with a
learned location log_alpha_u (temperature beta, stretch (l, r) = (-0.1, 1.1)):

    s = sigmoid((log U - log(1 - U) + log_alpha) / beta),  U ~ Uniform(0, 1),   z = clamp(s (r - l) + l, 0, 1)

so z is exactly 0 or 1 with positive probability, and P(z_u != 0) = sigmoid(log_alpha_u - beta log(-l / r)) is
differentiable. The expected number of units a site keeps is the sum of those probabilities; through the
backbone's exact per-site parameter count (Backbone.trimmed_param_counter, linear in each site's width) it gives
the expected share of parameters removed, E. A Lagrangian drives E to the target t (ramped from 0):

    L = task loss + lambda1 (E - t) + lambda2 (E - t)^2,   lambda1, lambda2 trained by gradient ascent

In evaluation a site keeps its round(sum P(z != 0)) units of largest log_alpha (rounded down to a multiple of
`multiple_of`, as ratio control's widths), at 1; the others are 0. DPHuBERT
keeps the kept units at a soft value (sigmoid(0.8 log_alpha / beta)) folded into the weights when pruning; kwyn keeps
them at 1, so that the masked model is exactly the trimmed one without rewriting weights, and the head (trained on
sampled gates) sees the units as they are.

    gates = HardConcreteSet(backbone.mask_sites())
    gates.constrain(backbone.trimmed_param_counter(), backbone.param_count(), target=0.5, ramp_steps=60, lr=0.1)
    loss = task_loss + gates.penalty(step)            # gates.kept_units(): what trimming removes
"""
from __future__ import annotations

import math

import torch
from torch import nn

from kwyn.sites import MaskSite, SiteModulation, SiteModulationSet, widths_in_multiples

STRETCH = (-0.1, 1.1)  # (l, r): the stretched interval, clipped to [0, 1] (Louizos et al.)
ELIGIBLE_BELOW_TARGET = 0.02  # a checkpoint is selectable once it removes at least target - this


class HardConcreteGate(SiteModulation):
    """The HardConcrete gates of one site's units: sampled in training, kept units at 1 in evaluation."""

    def __init__(self, site: MaskSite, init_drop: float = 0.01, beta: float = 2 / 3, multiple_of: int = 1):
        super().__init__(site)
        if not 0 < init_drop < 1:
            raise ValueError(f"init_drop must be in (0, 1), got {init_drop}")
        self.register_buffer("beta", torch.tensor(float(beta)))  # in the state: a loaded gate keeps its temperature
        # and its width rounding (kwyn.sites.widths_in_multiples), so that a loaded gate keeps the same units
        self.register_buffer("multiple_of", torch.tensor(int(multiple_of)))
        self.log_alpha = nn.Parameter(torch.full((site.units,), math.log(1 - init_drop) - math.log(init_drop)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # gates saved before the rounding existed kept every width as it came
        state_dict.setdefault(prefix + "multiple_of", torch.tensor(1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def keep_probability(self) -> torch.Tensor:
        """P(z_u != 0) per unit: differentiable in log_alpha."""
        low, high = STRETCH
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-low / high))

    def sample(self) -> torch.Tensor:
        low, high = STRETCH
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (high - low) + low).clamp(0.0, 1.0)

    def kept(self) -> torch.Tensor:
        """The round(expected number kept) units of largest log_alpha, sorted; with multiple_of N, that number
        rounded down to a multiple of N (kwyn.sites.widths_in_multiples)."""
        n = int(round(float(self.keep_probability().detach().sum())))
        n = widths_in_multiples({self.site.name: n}, [self.site], int(self.multiple_of))[self.site.name]
        order = torch.argsort(self.log_alpha.detach(), descending=True, stable=True)
        return order[:n].sort().values.cpu()

    def unit_values(self) -> torch.Tensor:
        if self.training:
            return self.sample()
        values = torch.zeros_like(self.log_alpha)
        values[self.kept().to(values.device)] = 1.0
        return values

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.scale_units(x, self.unit_values())


class HardConcreteSet(SiteModulationSet):
    """One HardConcreteGate per site and the Lagrangian that holds their expected size at a target."""
    kind = "hardconcrete"

    def __init__(self, sites: list[MaskSite], init_drop: float = 0.01, beta: float = 2 / 3, multiple_of: int = 1):
        super().__init__([HardConcreteGate(s, init_drop, beta, multiple_of) for s in sites])
        self.lambdas = nn.Parameter(torch.zeros(2))  # lambda1, lambda2 of the Lagrangian (maximised)
        self._count = None

    @classmethod
    def for_run(cls, sites, train, kept=None) -> "HardConcreteSet":
        return cls(sites)

    def constrain(self, count, full: int, target: float, ramp_steps: int, lr: float) -> None:
        """Hold the expected share of parameters removed at `target` (ramped linearly over `ramp_steps`);
        count = Backbone.trimmed_param_counter() of the encoder, full its parameter count; lr for log_alpha and
        (ascending) the lambdas."""
        if not getattr(count, "fitted", False):
            raise ValueError("hardconcrete needs a backbone whose parameter count is linear in each site's width "
                             "(Backbone.trimmed_param_counter gave exact counting instead)")
        self._count, self._full, self._target, self._ramp, self._lr = count, full, target, max(1, ramp_steps), lr

    def expected_ratio(self) -> torch.Tensor:
        """E: the expected share of encoder parameters the gates remove (differentiable)."""
        kept = {name: gate.keep_probability().sum() for name, gate in self.by_site().items()}
        return 1.0 - self._count(kept) / self._full

    def target_at(self, step: int) -> float:
        return self._target * min(1.0, max(0, step) / self._ramp)

    def penalty(self, step: int) -> torch.Tensor | None:
        if self._count is None:
            return None
        gap = self.expected_ratio() - self.target_at(step)
        return self.lambdas[0] * gap + self.lambdas[1] * gap ** 2

    def kept_units(self) -> dict[str, torch.Tensor]:
        return {name: gate.kept() for name, gate in self.by_site().items()}

    def eligible(self, trim_ratio: float) -> bool:
        # the Lagrangian reaches the target late and from below: select among models at it (2 points, as
        # ratio control lands), not a denser one that scores better
        return self._count is None or trim_ratio >= self._target - ELIGIBLE_BELOW_TARGET

    def param_groups(self, train) -> list[dict]:
        lr = self._lr if self._count is not None else train.mask_lr
        # a negative lr makes Adam ascend: the lambdas maximise the Lagrangian, as in DPHuBERT
        return [{"params": [g.log_alpha for g in self.values()], "lr": lr, "name": "masks"},
                {"params": [self.lambdas], "lr": -lr, "name": "lagrangian"}]

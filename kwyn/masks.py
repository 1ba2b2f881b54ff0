"""Learnable binary unit masks, their straight-through estimator and the sparsity losses.

A mask holds one logit per removable unit. Its forward value is round(sigmoid(logit))
(0 or 1); its backward pass hands the incoming gradient to the logit unchanged
(straight-through estimator, as the authors' code does). Masks are attached to a
backbone through hooks at the backbone's mask sites, so no model code is rewritten.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from kwyn.sites import MaskSite, SiteModulation, SiteModulationSet, widths_in_multiples

SPARSITY_LOSSES = ("paper", "authors_code")


def ste_binary(logits: torch.Tensor) -> torch.Tensor:
    """round(sigmoid(logits)) forward; identity gradient to the logits backward.

    torch.round rounds half to even, so a logit of exactly 0 (sigmoid 0.5) gives 0,
    as in the authors' code.
    """
    hard = torch.round(torch.sigmoid(logits))
    return logits + (hard - logits).detach()


class UnitMask(SiteModulation):
    """A binary keep/drop mask over the units of one site.

    A unit is kept when its logit exceeds `threshold` (0 by default: sigmoid > 0.5, the paper's
    rounding); ratio control (RatioControl) moves the threshold of every mask together.
    """

    def __init__(self, site: MaskSite, init_logit: float = 1.0):
        super().__init__(site)
        if init_logit <= 0:
            raise ValueError(f"init_logit must be > 0 so every unit starts on, got {init_logit}")
        self.logits = nn.Parameter(torch.full((site.units,), float(init_logit)))
        self.register_buffer("threshold", torch.zeros(()))
        self.enabled = True  # off: the site passes its units through (MaskSet.disabled)

    def unit_values(self) -> torch.Tensor:
        return ste_binary(self.logits - self.threshold)

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.scale_units(x, self.unit_values()) if self.enabled else x

    def kept(self) -> torch.Tensor:
        """Indices of the units this mask keeps."""
        return torch.nonzero(self.logits.detach() > self.threshold).flatten().cpu()


class MaskSet(SiteModulationSet):
    """One UnitMask per site of a backbone; index it by site name. The mask logits learn at train.mask_lr."""
    kind = "masks"

    def __init__(self, sites: list[MaskSite], init_logit: float = 1.0):
        super().__init__([UnitMask(s, init_logit) for s in sites])

    @classmethod
    def for_run(cls, sites, train, kept=None) -> "MaskSet":
        return cls(sites, train.mask_init)

    def kept_units(self) -> dict[str, torch.Tensor]:
        return {name: mask.kept() for name, mask in self.by_site().items()}

    def param_groups(self, train) -> list[dict]:
        # mask logits need a larger step than the head: at lr 1e-3 a logit starting at 1.0 takes
        # about 1,000 Adam steps to cross the rounding threshold (docs/design-notes.md, "Method")
        return [{"params": self.logits(), "lr": train.mask_lr, "name": "masks"}]

    def logits(self) -> list[torch.Tensor]:
        return [mask.logits for mask in self.values()]

    @contextmanager
    def disabled(self):
        """The full encoder for the duration: every site passes all its units (a distillation teacher)."""
        for mask in self.values():
            mask.enabled = False
        try:
            yield self
        finally:
            for mask in self.values():
                mask.enabled = True

    def set_threshold(self, threshold: float) -> None:
        for mask in self.values():
            mask.threshold.fill_(threshold)


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


class RatioControl:
    """Lands the masks on a requested trimming ratio by moving the rounding threshold.

    The paper's rounding keeps a unit when sigmoid(m) > 0.5; how many units that leaves depends
    on t and lambda in ways that have to be searched for (docs/design-notes.md, "Method"). Here the
    threshold tau is instead set, every `every` steps, so that keeping the units with logit > tau
    removes `target` of the encoder's parameters, counted exactly (Backbone.trimmed_param_counter):
    the units are ranked by logit over all sites and the cut is found by bisection. The target
    ramps linearly from 0 over the first `ramp` share of the steps, so the masks and the head
    adapt gradually. The logits still learn through the straight-through estimator, so the ranking
    is learned; the sparsity loss may still be added but no longer decides how much is removed.
    The achieved ratio lands within one unit's parameters of the target (below 2 points for every
    registered backbone's largest unit, a wav2vec2-large head: 1.3 %). With `multiple_of` N > 1, every conv and
    FFN site keeps a multiple of N units (kwyn.sites.widths_in_multiples; CPU kernels are faster on such
    widths): each site then gets its own threshold, keeping its best-ranked units.

        control = RatioControl(backbone, masks, target=0.5, total_steps=1000)
        for step in range(1000):
            control.update(step)  # then a training step; masks.kept_units() removes ~50 % at the end
    """

    def __init__(self, backbone, masks: MaskSet, target: float, total_steps: int, ramp: float = 0.5,
                 every: int = 5, seed: int = 0, start: int = 0, multiple_of: int = 1):
        if not 0 < target < 1:
            raise ValueError(f"ratio must be in (0, 1), got {target}")
        self.backbone, self.masks, self.target, self.multiple_of = backbone, masks, target, multiple_of
        self.sites = [mask.site for mask in masks.values()]
        # total_steps: the mask-training steps, which begin at step `start` (after a head warm-up)
        self.ramp_steps, self.every, self.start = max(1, round(ramp * total_steps)), every, start
        self.full = backbone.param_count()
        self.count = backbone.trimmed_param_counter()
        # equal logits at init would leave the first cut to site order; a tiny seeded jitter makes it random
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mask in masks.values():
                mask.logits.add_(1e-3 * torch.rand(mask.logits.shape, generator=generator).to(mask.logits.device))

    def target_at(self, step: int) -> float:
        return self.target * min(1.0, max(0, step - self.start) / self.ramp_steps)

    def kept_counts(self, order: list[tuple[str, int]], count: int) -> dict[str, int]:
        """Units kept per site when the `count` best-ranked units are kept (then rounded to multiple_of)."""
        kept = dict.fromkeys(self.masks.by_site(), 0)
        for name, _ in order[:count]:
            kept[name] += 1
        return widths_in_multiples(kept, self.sites, self.multiple_of)

    def ratio_keeping(self, order: list[tuple[str, int]], count: int) -> float:
        return 1.0 - self.count(self.kept_counts(order, count)) / self.full

    @torch.no_grad()
    def update(self, step: int, force: bool = False) -> float:
        """Set the threshold for `step` (every `every` steps, or when forced); returns the target used."""
        target = self.target_at(step)
        if not force and step % self.every:
            return target
        logits = torch.cat([m.logits.detach().cpu() for m in self.masks.values()])
        names = [(name, unit) for name, mask in self.masks.by_site().items() for unit in range(mask.logits.numel())]
        ranked = torch.argsort(logits, descending=True, stable=True).tolist()
        order = [names[i] for i in ranked]
        # the most units kept whose removal still reaches the target: ratio falls as more are kept
        low, high = 0, len(order)
        while low < high:
            mid = (low + high + 1) // 2
            if self.ratio_keeping(order, mid) >= target:
                low = mid
            else:
                high = mid - 1
        if self.multiple_of > 1:  # a threshold per site: its best-ranked kept_counts units
            for name, k in self.kept_counts(order, low).items():
                mask = self.masks[name]
                mask.threshold.fill_(_threshold_keeping(torch.sort(mask.logits.detach().cpu(), descending=True).values, k))
            return target
        sorted_logits = logits[ranked]
        if low == 0:
            threshold = float(sorted_logits[0]) + 1.0
        elif low == len(order):
            threshold = float(sorted_logits[-1]) - 1.0
        else:
            threshold = float(sorted_logits[low - 1] + sorted_logits[low]) / 2
        self.masks.set_threshold(threshold)
        return target


def _threshold_keeping(sorted_logits: torch.Tensor, k: int) -> float:
    """A threshold that keeps exactly the first k of these descending logits."""
    if k == 0:
        return float(sorted_logits[0]) + 1.0
    if k == len(sorted_logits):
        return float(sorted_logits[-1]) - 1.0
    return float(sorted_logits[k - 1] + sorted_logits[k]) / 2

"""Structured lottery tickets: iterative unit trimming with rewinding (Esling et al., ISMIR 2020).

One round: train, score every unit still present, remove the globally lowest-scored share of
them (20 % by default), rewind the remaining weights to an early checkpoint, retrain. The units
are the backbone's mask-site units (kwyn.sites), so a removed unit is held at zero by a fixed
0/1 mask while the rounds go on, and the final ticket is removed physically by Backbone.trim
(kwyn.trim.trim_model) with exactly the outputs of the masked model.

    masks = FixedMaskSet(backbone.mask_sites()); masks.attach(backbone)
    early = snapshot_state(model)                              # after a few steps of training
    for _ in range(rounds):
        train(model)
        scores = magnitude_scores(backbone)                    # or activation_/gradient_scores
        masks.set_kept(prune_round(scores, masks.kept_units(), share=0.2))
        rewind_state(model, early)

Unit scores (higher = more important) cover every unit of a site (removed ones included):
- magnitude: L1 norm of the unit's weights in the site's hooked module (|gamma| for a norm
  layer, as network slimming does);
- activation: mean |activation| of the unit where the site's modulation acts;
- gradient: first-order Taylor, |d loss / d unit scale| at scale 1, summed over batches.

prune_round divides each site's scores by their mean over the site's kept units before the
global ranking, so that layers whose scores live on different scales (widths, fan-ins, norm
layers) compete fairly. This is our choice: only the paper's abstract is at hand here, so its
exact ranking rule could not be checked; normalize=False ranks the raw scores globally.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from kwyn.sites import MaskSite, SiteModulation, SiteModulationSet, widths_in_multiples

SCORES = ("magnitude", "activation", "gradient")


# -- fixed masks -----------------------------------------------------------------------------
class FixedMask(SiteModulation):
    """A non-learnable 0/1 keep vector over the units of one site (a buffer, not a parameter)."""

    def __init__(self, site: MaskSite, kept: torch.Tensor | None = None):
        super().__init__(site)
        self.register_buffer("keep", torch.ones(site.units))
        if kept is not None:
            self.set_kept(kept)

    def set_kept(self, kept) -> None:
        kept = torch.as_tensor(kept, dtype=torch.long).flatten()
        if kept.numel() and (kept.min() < 0 or kept.max() >= self.site.units):
            raise ValueError(f"site {self.site.name}: unit index out of range 0..{self.site.units - 1}")
        self.keep.zero_()
        self.keep[kept.to(self.keep.device)] = 1.0

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.scale_units(x, self.keep)

    def kept(self) -> torch.Tensor:
        """Indices of the units this mask keeps (sorted)."""
        return torch.nonzero(self.keep > 0.5).flatten().cpu()


class FixedMaskSet(SiteModulationSet):
    """One FixedMask per site: units removed by lottery rounds (or a scratch-like fixed architecture) held at 0."""
    kind = "fixed_masks"

    def __init__(self, sites: list[MaskSite], kept: dict[str, torch.Tensor] | None = None):
        super().__init__([FixedMask(s) for s in sites])
        if kept is not None:
            self.set_kept(kept)

    @classmethod
    def for_run(cls, sites, train, kept=None) -> "FixedMaskSet":
        return cls(sites, kept)

    def set_kept(self, kept: dict[str, torch.Tensor]) -> None:
        masks = self.by_site()
        unknown = sorted(set(kept) - set(masks))
        if unknown:
            raise KeyError(f"unknown mask sites {unknown}; sites: {sorted(masks)}")
        for name, idx in kept.items():
            masks[name].set_kept(idx)

    def kept_units(self) -> dict[str, torch.Tensor]:
        return {name: mask.kept() for name, mask in self.by_site().items()}


# -- unit scores -----------------------------------------------------------------------------
def magnitude_scores(backbone: nn.Module, sites: list[MaskSite] | None = None,
                     batches: Iterable | None = None) -> dict[str, torch.Tensor]:
    """L1 norm of each unit's weights in its site's hooked module.

    hook "output": the weight sliced along the module's output dim (dim 0 of Linear, ConvNd,
    BatchNorm/GroupNorm/LayerNorm gamma, i.e. |gamma| for a norm layer as network slimming does);
    hook "input": along its input dim (dim 1 of Linear/ConvNd). Layout "heads" sums the
    head_dim slices of one head. A hooked module with no such weight (e.g. wav2vec2's conv
    blocks, conv -> norm -> GELU containers) raises ValueError, unless `batches` are given: those
    sites then get activation scores instead, with a warning.
    """
    backbone = _backbone_of(backbone)
    sites = backbone.mask_sites() if sites is None else sites
    scores, fallback = {}, []
    for site in sites:
        module = backbone.get_submodule(site.module)
        try:
            weight, dim = _unit_weight(site, module)
        except ValueError:
            if batches is None:
                raise
            fallback.append(site)
            continue
        scores[site.name] = _per_unit_l1(site, weight.detach(), dim)
    if fallback:
        warnings.warn(f"magnitude score: sites {[s.name for s in fallback]} hook a module with no per-unit weight "
                      "of its own; they get activation scores instead", stacklevel=2)
        scores.update(activation_scores(backbone, fallback, batches))
    return {s.name: scores[s.name] for s in sites}


def activation_scores(model: nn.Module, sites: list[MaskSite] | None, batches: Iterable) -> dict[str, torch.Tensor]:
    """Mean |activation| of each unit where its site's modulation acts, over `batches`.

    model: a backbone (called as backbone(batch) = embed) or a TaskModel; each batch is the
    model's input, a tensor or a tuple of positional arguments. The model runs in the mode it is
    in (call .eval() first for inference statistics) and without gradients. Hooks are added
    after any mask already attached, so a masked unit scores 0.
    """
    backbone = _backbone_of(model)
    sites = backbone.mask_sites() if sites is None else sites
    sums = {s.name: torch.zeros(s.units, dtype=torch.float64) for s in sites}
    counts = dict.fromkeys(sums, 0)

    def record(site, x):
        per_unit = _per_unit_abs(site, x.detach())
        sums[site.name] += per_unit.sum(dim=0).double().cpu()
        counts[site.name] += per_unit.shape[0]

    handles = []
    for site in sites:
        target = backbone.get_submodule(site.module)
        if site.hook == "input":
            handles.append(target.register_forward_pre_hook(lambda _m, args, site=site: record(site, args[0])))
        else:
            handles.append(target.register_forward_hook(lambda _m, _a, out, site=site: record(site, out)))
    try:
        with torch.no_grad():
            for batch in batches:
                _call(model, batch)
    finally:
        for h in handles:
            h.remove()
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"activation score: no activation reached sites {empty} (no batches?)")
    return {name: (sums[name] / counts[name]).float() for name in sums}


class _UnitScale(SiteModulation):
    """An all-ones scale per unit whose gradient is the first-order Taylor score."""

    def __init__(self, site: MaskSite, device=None):
        super().__init__(site)
        self.values = nn.Parameter(torch.ones(site.units, device=device))

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return self.site.scale_units(x, self.values)


def gradient_scores(model: nn.Module, sites: list[MaskSite] | None,
                    loss_fn: Callable[[nn.Module, object], torch.Tensor], batches: Iterable) -> dict[str, torch.Tensor]:
    """First-order Taylor score |d loss / d s_u| at s_u = 1, summed over batches (Molchanov et al.).

    An all-ones scale s is attached at every site (after any mask already attached, so a masked
    unit scores 0) and loss_fn(model, batch) -> scalar task loss is back-propagated to it. Only
    the scales are differentiated: the model's parameters and their .grad are left alone.
    Scores are >= 0, and 0 for a unit that cannot affect the loss.
    """
    backbone = _backbone_of(model)
    sites = backbone.mask_sites() if sites is None else sites
    device = next(backbone.parameters()).device
    scales = [_UnitScale(site, device) for site in sites]
    handles = [s.attach(backbone) for s in scales]
    totals = [torch.zeros(site.units, dtype=torch.float64) for site in sites]
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, [s.values for s in scales], allow_unused=True)
            for total, g in zip(totals, grads):
                if g is not None:
                    total += g.detach().abs().double().cpu()
    finally:
        for h in handles:
            h.remove()
    return {site.name: total.float() for site, total in zip(sites, totals)}


def unit_scores(method: str, model: nn.Module, sites: list[MaskSite] | None = None, batches: Iterable | None = None,
                loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """Dispatch on a score name from SCORES (as a params file would name it)."""
    if method == "magnitude":
        return magnitude_scores(model, sites, batches)
    if method == "activation":
        return activation_scores(model, sites, batches)
    if method == "gradient":
        if loss_fn is None:
            raise ValueError("gradient scores need a loss_fn(model, batch)")
        return gradient_scores(model, sites, loss_fn, batches)
    raise ValueError(f"unknown unit score {method!r}; known: {', '.join(SCORES)}")


# -- pruning and rewinding -------------------------------------------------------------------
def prune_round(scores: dict[str, torch.Tensor], kept: dict[str, torch.Tensor], share: float = 0.2,
                normalize: bool = True, sites: list | None = None, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Remove the globally lowest-scored round(share * n_kept) units among those still kept; with multiple_of N
    (and the `sites`), each conv and FFN site then also drops its lowest-scored units down to a multiple of N
    (kwyn.sites.widths_in_multiples), so a round removes at least `share`.

    scores[site]: one score per unit of the site (higher = more important); only the kept units
    are ranked. normalize: each site's kept scores are first divided by their mean (a site whose
    mean is 0 keeps its zeros), so sites of different widths and scales compete fairly. Ties go
    to the earlier site in `kept` order, then to the lower unit index. A site may lose every
    unit. Returns the new kept indices (sorted) for every site of `kept`.
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    missing = sorted(set(kept) - set(scores))
    if missing:
        raise KeyError(f"no scores for sites {missing}")
    names, pools = [], []
    for name, idx in kept.items():
        idx = torch.as_tensor(idx, dtype=torch.long).flatten().sort().values
        s = torch.as_tensor(scores[name]).detach().flatten().double().cpu()
        if idx.numel() and idx.max() >= s.numel():
            raise ValueError(f"site {name}: kept unit {int(idx.max())} but only {s.numel()} scores")
        s = s[idx]
        if torch.isnan(s).any():
            raise ValueError(f"site {name}: NaN scores")
        if normalize and s.numel() and s.mean() > 0:
            s = s / s.mean()
        names.append((name, idx))
        pools.append(s)
    flat = torch.cat(pools) if pools else torch.zeros(0, dtype=torch.float64)
    n_remove = int(round(share * flat.numel()))
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    removed[torch.sort(flat, stable=True).indices[:n_remove]] = True
    out, start = {}, 0
    for name, idx in names:
        out[name] = idx[~removed[start:start + idx.numel()]]
        start += idx.numel()
    if multiple_of > 1:
        if sites is None:
            raise ValueError("prune_round: multiple_of needs the sites (their kinds and widths)")
        widths = widths_in_multiples({name: len(idx) for name, idx in out.items()}, sites, multiple_of)
        for name, idx in out.items():
            site_scores = torch.as_tensor(scores[name]).detach().flatten().double().cpu()[idx]
            best = torch.sort(site_scores, descending=True, stable=True).indices[:widths[name]]
            out[name] = idx[best].sort().values
    return out


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of model.state_dict(), to rewind to later (state_dict alone would alias live weights)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rewind_state(model: nn.Module, state_at_rewind: dict[str, torch.Tensor],
                 masks: FixedMaskSet | None = None) -> None:
    """Load the early checkpoint into model (backbone + head); removed units stay removed.

    Masks attached by hooks are not part of the model's state and are untouched. When `masks`
    is given (e.g. registered inside the model, so that the checkpoint holds their buffers),
    their current kept units are restored after the load.
    """
    kept = masks.kept_units() if masks is not None else None
    model.load_state_dict(state_at_rewind)
    if masks is not None:
        masks.set_kept(kept)


# -- helpers ---------------------------------------------------------------------------------
def _backbone_of(model: nn.Module) -> nn.Module:
    """The module site paths are relative to: a TaskModel's backbone, or the backbone itself."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) and hasattr(backbone, "mask_sites") else model


def _call(model: nn.Module, batch):
    return model(*batch) if isinstance(batch, (tuple, list)) else model(batch)


def _unit_weight(site: MaskSite, module: nn.Module) -> tuple[torch.Tensor, int]:
    """The hooked module's weight and the dim along which it holds the site's units."""
    weight = getattr(module, "weight", None)
    kind = type(module).__name__
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"site {site.name}: hooked module {site.module} ({kind}) has no weight to score units by")
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if site.hook == "output":
        dim = 1 if transposed else 0
    else:
        if weight.dim() < 2:
            raise ValueError(f"site {site.name}: hooked module {site.module} ({kind}) has no input dim in its weight")
        if getattr(module, "groups", 1) != 1:
            raise ValueError(f"site {site.name}: grouped conv {site.module} ({kind}) not supported")
        dim = 0 if transposed else 1
    if weight.shape[dim] % site.units or (site.layout != "heads" and weight.shape[dim] != site.units):
        raise ValueError(f"site {site.name}: {site.module} ({kind}) weight {tuple(weight.shape)} does not hold "
                         f"{site.units} units along dim {dim}")
    return weight, dim


def _per_unit_l1(site: MaskSite, weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.movedim(dim, 0).reshape(site.units, -1).abs().sum(dim=1).float().cpu()


def _per_unit_abs(site: MaskSite, x: torch.Tensor) -> torch.Tensor:
    """|x| as (positions, units), every non-unit element of x a position."""
    if site.layout == "channels_first":
        return x.abs().movedim(1, -1).reshape(-1, site.units)
    if site.layout == "channels_last":
        return x.abs().reshape(-1, site.units)
    return x.abs().unflatten(-1, (site.units, -1)).movedim(-1, 0).reshape(-1, site.units)

"""Helpers shared by the backbone tests: random masks and keeps, and a masked forward pass."""
import torch

from kwyn.masks import UnitMask
from kwyn.sites import attach_all


def random_masks(backbone, scenario: dict, seed: int = 0) -> dict[str, UnitMask]:
    """One mask per site keeping "none", "some" (a random half) or "all" units; unnamed sites keep "some"."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for site in backbone.mask_sites():
        mask = UnitMask(site)
        mode = scenario.get(site.name, "some")
        with torch.no_grad():
            if mode == "none":
                mask.logits.fill_(-1.0)
            elif mode == "some":
                mask.logits[torch.randperm(site.units, generator=gen)[: site.units // 2]] = -1.0
        masks[site.name] = mask
    return masks


def masked_embedding(backbone, masks, audio):
    """backbone.embed with the masks attached only for this call."""
    handles = attach_all(backbone, masks.values())
    try:
        with torch.no_grad():
            return backbone.embed(audio)
    finally:
        for h in handles:
            h.remove()


def random_keep(model, generator, empty=(), full=(), random_count=False):
    """Kept unit indices per site: none for sites in `empty`, all for `full`, otherwise a random subset
    of half the units (or of a random count in 1..units-1 with random_count)."""
    keep = {}
    for site in model.mask_sites():
        if site.name in empty:
            keep[site.name] = torch.arange(0)
        elif site.name in full:
            keep[site.name] = torch.arange(site.units)
        else:
            n = int(torch.randint(1, site.units, (1,), generator=generator)) if random_count else site.units // 2
            keep[site.name] = torch.randperm(site.units, generator=generator)[:n].sort().values
    return keep

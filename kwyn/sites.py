"""Mask sites: where a backbone's removable units live and how a per-unit vector reaches them.

A site names a submodule of the backbone and says whether its input or its output carries
the units, and how they are laid out in that tensor. Anything that multiplies (or shifts)
units, a binary mask or SSF's scale-and-shift, is a SiteModulation attached there by a
hook, so the backbone's forward code is never rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SITE_KINDS = ("conv_channels", "attention_heads", "ffn_units")
LAYOUTS = ("channels_first", "channels_last", "heads")


@dataclass(frozen=True)
class MaskSite:
    name: str  # unique within the backbone, e.g. "conv3" or "layer4.attention"
    kind: str  # one of SITE_KINDS
    units: int  # number of removable units at this site
    module: str  # dotted path of the hooked submodule
    hook: str  # "output": the module's output carries the units; "input": its first input does
    layout: str  # "channels_first" (dim 1), "channels_last" (last dim), "heads" (last dim = heads x head_dim)

    def __post_init__(self):
        if self.kind not in SITE_KINDS:
            raise ValueError(f"site {self.name}: kind {self.kind!r} not in {SITE_KINDS}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"site {self.name}: layout {self.layout!r} not in {LAYOUTS}")
        if self.hook not in ("input", "output"):
            raise ValueError(f"site {self.name}: hook must be 'input' or 'output', got {self.hook!r}")

    def _unit_view(self, x: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reshape so that `values` (one per unit) broadcasts over x's units."""
        if self.layout == "channels_first":
            return x, values.view(1, -1, *([1] * (x.dim() - 2)))
        if self.layout == "channels_last":
            return x, values
        return x.unflatten(-1, (self.units, -1)), values[:, None]

    def scale_units(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        xv, v = self._unit_view(x, values.to(x.dtype))
        return (xv * v).reshape(x.shape)

    def shift_units(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        xv, v = self._unit_view(x, values.to(x.dtype))
        return (xv + v).reshape(x.shape)


class SiteModulation(nn.Module):
    """Something that transforms the units of one site, attached to a backbone by a hook."""

    def __init__(self, site: MaskSite):
        super().__init__()
        self.site = site

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attach(self, backbone: nn.Module) -> torch.utils.hooks.RemovableHandle:
        target = backbone.get_submodule(self.site.module)
        if self.site.hook == "input":
            return target.register_forward_pre_hook(
                lambda _module, args: (self.modulate(args[0]),) + tuple(args[1:]))
        return target.register_forward_hook(lambda _module, _args, output: self.modulate(output))


def widths_in_multiples(kept: dict[str, int], sites: list[MaskSite], multiple: int) -> dict[str, int]:
    """Units kept per site rounded down to a multiple of `multiple` (a site kept whole stays whole): CPU kernels
    run faster on such widths. Attention heads are left as they are: a head is already head_dim channels wide.

        widths_in_multiples({"conv1": 1000, "layer0.attention": 5}, sites, 8)   # {"conv1": 1000 -> 1000 if whole, else 992, ...}
    """
    if multiple == 1:
        return dict(kept)
    by_name = {s.name: s for s in sites}
    return {name: n if n == by_name[name].units or by_name[name].kind == "attention_heads" else n - n % multiple
            for name, n in kept.items()}


def attach_all(backbone: nn.Module, modulations) -> list[torch.utils.hooks.RemovableHandle]:
    return [m.attach(backbone) for m in modulations]


def module_key(site_name: str) -> str:
    """nn.ModuleDict keys cannot contain '.', site names (e.g. 'layer3.ffn') can."""
    return site_name.replace(".", "__")


class SiteModulationSet(nn.ModuleDict):
    """One SiteModulation per mask site of a backbone, indexed by site name: what a method hooks into the encoder.

    Subclasses (kwyn.masks.MaskSet, kwyn.ssf.ScaleShiftSet, kwyn.lottery.FixedMaskSet,
    kwyn.hardconcrete.HardConcreteSet) say what they learn (`param_groups`), what they remove
    (`kept_units`, None when nothing is removed) and whether they stay in the trimmed model
    (`kept_at_trim`, SSF's scale-and-shift). `kind` names the set in a run's best.pt.

        masks = MaskSet(backbone.mask_sites())
        masks.attach(backbone)            # hooks at every site; returns the handles
        masks.kept_units(); masks.detach()
    """
    kind: str = ""
    kept_at_trim: bool = False  # the trimmed model keeps these modulations attached (they change its outputs)

    def __init__(self, modulations: list[SiteModulation]):
        super().__init__({module_key(m.site.name): m for m in modulations})
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def for_run(cls, sites: list[MaskSite], train, kept: dict | None = None) -> "SiteModulationSet":
        """The set a run trains (or a saved one is loaded into): train = the run's `train` settings,
        kept = the units a saved fixed mask keeps."""
        return cls(sites)

    def __getitem__(self, site_name: str) -> SiteModulation:
        return super().__getitem__(module_key(site_name))

    def by_site(self) -> dict[str, SiteModulation]:
        return {modulation.site.name: modulation for modulation in self.values()}

    def attach(self, model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Hook every modulation onto the backbone (or a TaskModel's backbone); returns the handles."""
        backbone = getattr(model, "backbone", model)
        handles = [modulation.attach(backbone) for modulation in self.values()]
        self._handles.extend(handles)
        return handles

    def detach(self) -> None:
        """Remove the hooks this set attached."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def kept_units(self) -> dict[str, torch.Tensor] | None:
        """{site: indices of the units kept}; None for a set that removes nothing."""
        return None

    @property
    def total_units(self) -> int:
        return sum(m.site.units for m in self.values())

    @property
    def kept_count(self) -> int:
        kept = self.kept_units()
        return self.total_units if kept is None else sum(len(units) for units in kept.values())

    def param_groups(self, train) -> list[dict]:
        """The optimizer groups of what this set learns, at the run's `train` settings."""
        return []

    def eligible(self, trim_ratio: float) -> bool:
        """Whether a validation at this achieved ratio may be selected as the run's model (HardConcrete: only once
        it removes what was asked, so that a run is compared at its target)."""
        return True

    def penalty(self, step: int) -> torch.Tensor | None:
        """A loss term the set adds at `step` of the mask training (HardConcrete's Lagrangian), or None."""
        return None

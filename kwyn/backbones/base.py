"""The interface every backbone implements.

A backbone is a frozen pretrained audio encoder that knows
- how it is built from a JSON-able config (random init) and loaded with pretrained weights,
- its sample rate and embedding size,
- its mask sites (where removable units live, see kwyn.sites),
- how to turn a batch of audio into one time-averaged embedding per clip (`embed`) and, for
  sequence tasks (ASR), into the frame sequence that embedding averages (`sequence`),
- how to physically remove units at each site (`trim`), in place.

A trimmed backbone is rebuilt anywhere from (config, kept units per site, state_dict):
build from config, trim to the kept units, load the weights (kwyn.trim.load_trimmed).
"""
from __future__ import annotations

import math
from typing import Callable, ClassVar

import torch
from torch import nn

from kwyn.sites import MaskSite


class Backbone(nn.Module):
    family: ClassVar[str]
    sample_rate: ClassVar[int]

    def __init__(self, config: dict):
        super().__init__()
        self.config = {"family": self.family, **config}

    # -- to implement -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint: str | None = None, **config) -> "Backbone":
        raise NotImplementedError

    @property
    def embedding_dim(self) -> int:
        raise NotImplementedError

    def mask_sites(self) -> list[MaskSite]:
        raise NotImplementedError

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) at self.sample_rate -> (batch, embedding_dim), averaged over time."""
        raise NotImplementedError

    def sequence(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, samples), valid samples per clip (None: all) -> (features (batch, frames, dim), valid frames
        per clip (batch,)): the frame-level representation whose time average over all frames is `embed`."""
        raise NotImplementedError(f"backbone family {self.family!r} gives no frame sequence (it pools time away "
                                  "inside the encoder), so it cannot serve sequence tasks such as ASR")

    def trim(self, keep: dict[str, torch.Tensor]) -> None:
        """Remove every unit not listed in keep[site] (sorted unit indices), in place."""
        raise NotImplementedError

    # -- layer pruning (kwyn.convexity): families with a stack of transformer layers ------
    @property
    def num_layers(self) -> int:
        """Transformer layers this backbone runs now (after any keep_layers)."""
        raise NotImplementedError(f"backbone family {self.family!r} has no transformer layer stack to count")

    def layer_embeddings(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """(batch, samples) -> one (batch, embedding_dim) time-averaged embedding per transformer layer
        (index 0: the first layer's output), from one forward pass. Entry i - 1 is exactly what `embed`
        returns after keep_layers(i): the layer's output through the encoder's own post-layer processing."""
        raise NotImplementedError(f"backbone family {self.family!r} gives no per-layer embeddings "
                                  "(no transformer layer stack), so it cannot be layer-pruned")

    def keep_layers(self, n: int) -> None:
        """Physically drop every transformer layer after the n-th (1 <= n <= num_layers), in place; the
        count is recorded in self.config, so build_backbone(self.config) builds n layers."""
        raise NotImplementedError(f"backbone family {self.family!r} has no transformer layers to drop")

    # -- shared -------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.embed(audio)

    @classmethod
    def has_sequence(cls) -> bool:
        """Whether this family implements `sequence` (and so can serve ASR)."""
        return cls.sequence is not Backbone.sequence

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def site(self, name: str) -> MaskSite:
        for s in self.mask_sites():
            if s.name == name:
                return s
        raise KeyError(f"{self.family} has no mask site {name!r}; sites: {[s.name for s in self.mask_sites()]}")

    def trimmed_param_count(self, keep: dict[str, torch.Tensor]) -> int:
        """Exact parameter count after trimming to `keep`, counted on a meta-device copy."""
        return sum(math.prod(shape) for shape in self._trimmed_shapes(keep).values())

    def _trimmed_shapes(self, keep: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            shadow = type(self)(self.config)
        shadow.trim(keep)
        return {name: tuple(p.shape) for name, p in shadow.named_parameters()}

    def trimmed_param_counter(self, checks: int = 6, seed: int = 0) -> Callable[[dict[str, int]], int]:
        """count({site: units kept}) -> the parameters left after trimming to that many units per site.

        The same number as trimmed_param_count, without building a model per call (20-30 ms each, which
        RatioControl's bisection needs a dozen times per update). Trimming takes whole rows and columns,
        so each dimension of each parameter moves by a fixed step per unit a site gives up, plus possibly
        a fixed jump at the first one (wav2vec2's projection gains one column when conv 6 loses any
        channel). Two meta-device trims per site, one and two units short, read off both. The result is
        checked against exact counts (every site empty, and `checks` random widths, about half the sites
        whole); a family that breaks the rule gets exact counting instead (`.fitted` says which).
        """
        units = {s.name: s.units for s in self.mask_sites()}

        def exact(counts: dict[str, int]) -> int:
            return self.trimmed_param_count({n: torch.arange(counts[n]) for n in units})

        exact.fitted = False

        def shapes_short_by(site: str, k: int) -> dict[str, tuple[int, ...]]:
            return self._trimmed_shapes({s: torch.arange(u - k * (s == site)) for s, u in units.items()})

        full = shapes_short_by("", 0)
        # per parameter that any site moves: (site, dims lost to the first unit removed, dims lost per further unit)
        moves: dict[str, list[tuple[str, tuple[int, ...], tuple[int, ...]]]] = {name: [] for name in full}
        for site, n in units.items():
            shorts = [shapes_short_by(site, k) for k in range(1, min(n, 2) + 1)]
            if any(short.keys() != full.keys() or any(len(short[k]) != len(full[k]) for k in full)
                   for short in shorts):
                return exact
            for name, shape in full.items():
                first = tuple(a - b for a, b in zip(shape, shorts[0][name])) if shorts else (0,) * len(shape)
                step = tuple(a - b for a, b in zip(shorts[0][name], shorts[1][name])) if n >= 2 else first
                if any(first) or any(step):
                    moves[name].append((site, first, step))

        fixed = sum(math.prod(shape) for name, shape in full.items() if not moves[name])
        moving = [(full[name], site_moves) for name, site_moves in moves.items() if site_moves]

        def count(counts: dict[str, int]) -> int:
            total = fixed
            for shape, site_moves in moving:
                dims = list(shape)
                for site, first, step in site_moves:
                    removed = units[site] - counts[site]
                    if removed:
                        dims = [d - f - (removed - 1) * s for d, f, s in zip(dims, first, step)]
                total += math.prod(dims)
            return total

        count.fitted = True
        generator = torch.Generator().manual_seed(seed)

        def random_width(n: int) -> int:
            whole = bool(torch.randint(0, 2, (1,), generator=generator))
            return n if whole or n == 0 else int(torch.randint(0, n, (1,), generator=generator))

        probes = [{n: 0 for n in units}] + [{n: random_width(u) for n, u in units.items()} for _ in range(checks)]
        return count if all(count(c) == exact(c) for c in probes) else exact

    def site_table(self) -> list[dict]:
        """One row per site: name, kind, units, and parameters removed with one unit."""
        full = self.param_count()
        rows = []
        for s in self.mask_sites():
            keep = {s.name: torch.arange(1, s.units)}
            rows.append({"site": s.name, "kind": s.kind, "units": s.units,
                         "params_per_unit": full - self.trimmed_param_count(keep)})
        return rows

    def check_sample_rate(self, sample_rate: int | None, model_name: str | None = None) -> None:
        """Reject audio declared at another rate, rather than embed it at the wrong speed."""
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(f"{model_name or self.family} expects {self.sample_rate} Hz audio, got {sample_rate} Hz: "
                             "resample first")

    def example_input(self, seconds: float, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, int(round(seconds * self.sample_rate)))

    def validate_keep(self, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sites = {s.name: s for s in self.mask_sites()}
        unknown = sorted(set(keep) - set(sites))
        if unknown:
            raise KeyError(f"unknown mask sites {unknown} for {self.family}; sites: {sorted(sites)}")
        checked = {}
        for name, idx in keep.items():
            idx = torch.as_tensor(idx, dtype=torch.long).flatten()
            if idx.device.type != "meta":
                if idx.numel() and (idx.min() < 0 or idx.max() >= sites[name].units):
                    raise ValueError(f"site {name}: unit index out of range 0..{sites[name].units - 1}")
                if idx.unique().numel() != idx.numel():
                    raise ValueError(f"site {name}: repeated unit index")
                idx = idx.sort().values
            checked[name] = idx
        return checked


def full_lengths(audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Valid samples per clip: `lengths` (clamped to the padded width) or the full width."""
    if lengths is None:
        return torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
    return torch.as_tensor(lengths, dtype=torch.long, device=audio.device).clamp(max=audio.shape[1])

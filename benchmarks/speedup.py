"""Size, FLOPs and CPU latency of a backbone trimmed at given ratios by uniformly random masks.

Weights do not change size, FLOPs or latency, so the backbone is randomly initialised unless
--pretrained. For each ratio R, every site keeps the same random share q of its units, with q
found by bisection so that the share of encoder parameters removed is R (counted exactly).
Latency: median over --repeats after --warmup, all models alternated run by run in one process.

    python benchmarks/speedup.py --backbone crepe-full --input-seconds 0.064 --ratios 0.25 0.5 0.75 \
        --json benchmarks/results/speedup_crepe-full.json
"""
from __future__ import annotations

import argparse
import platform

import torch

from kwyn import profile
from kwyn.backbones import load_backbone
from kwyn.io import write_json
from kwyn.sites import widths_in_multiples
from kwyn.trim import trim_model


def uniform_keep(backbone, share: float, generator: torch.Generator, multiple_of: int = 1) -> dict[str, list[int]]:
    sites = backbone.mask_sites()
    widths = widths_in_multiples({s.name: int(round(share * s.units)) for s in sites}, sites, multiple_of)
    return {s.name: sorted(torch.randperm(s.units, generator=generator)[:widths[s.name]].tolist()) for s in sites}


def keep_for_ratio(backbone, ratio: float, seed: int, multiple_of: int = 1) -> dict[str, list[int]]:
    """Uniform per-site keep share whose exact removed-parameter share is closest to `ratio` (widths rounded down to
    multiples of `multiple_of` at conv and FFN sites, as ratio control's sparsity.multiple_of)."""
    full = backbone.param_count()
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = uniform_keep(backbone, mid, torch.Generator().manual_seed(seed), multiple_of)
        removed = 1 - backbone.trimmed_param_count({k: torch.tensor(v, dtype=torch.long) for k, v in keep.items()}) / full
        lo, hi = (lo, mid) if removed < ratio else (mid, hi)
    return uniform_keep(backbone, (lo + hi) / 2, torch.Generator().manual_seed(seed), multiple_of)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--input-seconds", type=float, required=True)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--json", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--multiple-of", type=int, default=1, help="conv/FFN widths kept in multiples of this")
    args = parser.parse_args(argv)
    if any(not 0 <= r < 1 for r in args.ratios):
        parser.error("--ratios must lie in [0, 1)")

    torch.manual_seed(args.seed)
    full = load_backbone(args.backbone, pretrained=args.pretrained).requires_grad_(False)
    example = full.example_input(args.input_seconds, args.batch)
    models, achieved = {0.0: full}, {0.0: 0.0}
    for ratio in args.ratios:
        trimmed = trim_model(load_backbone(args.backbone, pretrained=args.pretrained).requires_grad_(False),
                             keep_for_ratio(full, ratio, args.seed, args.multiple_of))
        models[ratio] = trimmed
        achieved[ratio] = 1 - trimmed.param_count() / full.param_count()
    latency = profile.latency_ms({str(r): m for r, m in models.items()}, example, args.repeats, args.warmup,
                                 args.threads)
    base_cost = profile.cost(full, example)
    rows = []
    for ratio, model in models.items():
        cost = profile.cost(model, example)
        rows.append({"backbone": args.backbone, "input_seconds": args.input_seconds, "ratio": ratio,
                     "achieved_ratio": round(achieved[ratio], 4), **cost,
                     "latency_ms": round(latency[str(ratio)], 3),
                     "speedup": round(latency["0.0"] / latency[str(ratio)], 3),
                     "flops_ratio": round(base_cost["gflops"] / cost["gflops"], 3),
                     "batch": args.batch, "threads": args.threads, "repeats": args.repeats,
                     "multiple_of": args.multiple_of,
                     "machine": platform.processor() or platform.machine()})
        print({k: rows[-1][k] for k in ("ratio", "achieved_ratio", "params", "gmacs", "latency_ms", "speedup",
                                        "flops_ratio")})
    write_json(args.json, rows)


if __name__ == "__main__":
    main()

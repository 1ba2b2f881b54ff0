"""Where a trimmed model's time goes: CPU time per operator, full model against trimmed, next to the FLOPs ratio.

`benchmarks/speedup.py` measures speed-up / FLOPs ratio; where it falls below 1, this says which operators do not
shrink with the FLOPs. Random weights and uniformly random masks (speedup.keep_for_ratio), batch 1. For each
model: the median wall time of a forward pass (the two models alternated, kwyn.profile.latency_ms); the time inside operators (torch.profiler's self CPU time,
summed per run) and the rest (Python, dispatch, allocation: wall - operators); per operator, its time in the
full and the trimmed model and how much it shrank (full / trimmed), against the FLOPs ratio.

    python benchmarks/op_profile.py --backbone wav2vec2-base --input-seconds 4 --ratio 0.75 --multiple-of 8 \
        --json benchmarks/results/op_profile_wav2vec2-base.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedup import keep_for_ratio  # noqa: E402

from kwyn import profile  # noqa: E402
from kwyn.backbones import load_backbone  # noqa: E402
from kwyn.io import write_json  # noqa: E402
from kwyn.trim import trim_model  # noqa: E402


def operator_ms(model, example, repeats: int) -> dict[str, float]:
    """Self CPU time per operator name, ms per forward pass (the mean over `repeats` profiled passes)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            model(example)
    return {e.key: e.self_cpu_time_total / 1e3 / repeats for e in prof.key_averages() if e.self_cpu_time_total > 0}


def compare(full, trimmed, example, repeats: int = 10, warmup: int = 3, threads: int = 2, top: int = 12) -> dict:
    """Wall time (kwyn.profile.latency_ms: medians, the two models alternated) and per-operator time of `full` and
    `trimmed` on `example`."""
    with torch.inference_mode():
        walls = profile.latency_ms({"full": full, "trimmed": trimmed}, example, repeats, warmup, threads)
        ops = {name: operator_ms(m, example, repeats) for name, m in (("full", full), ("trimmed", trimmed))}
    flops = {name: profile.cost(m, example)["gflops"] for name, m in (("full", full), ("trimmed", trimmed))}
    inside = {name: sum(ops[name].values()) for name in ops}
    names = sorted(set(ops["full"]) | set(ops["trimmed"]), key=lambda k: -ops["trimmed"].get(k, 0.0))[:top]
    return {
        "gflops": flops, "flops_ratio": flops["full"] / flops["trimmed"],
        "wall_ms": walls, "speedup": walls["full"] / walls["trimmed"],
        "operators_ms": inside, "outside_operators_ms": {k: walls[k] - inside[k] for k in walls},
        "operators": [{"operator": k, "full_ms": ops["full"].get(k, 0.0), "trimmed_ms": ops["trimmed"].get(k, 0.0),
                       "share_of_trimmed": ops["trimmed"].get(k, 0.0) / inside["trimmed"],
                       "shrink": ops["full"].get(k, 0.0) / ops["trimmed"][k] if ops["trimmed"].get(k) else None}
                      for k in names],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--input-seconds", type=float, required=True)
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--multiple-of", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 0 < args.ratio < 1:
        parser.error("--ratio must lie in (0, 1)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    full = load_backbone(args.backbone, pretrained=False).requires_grad_(False).eval()
    trimmed = trim_model(load_backbone(args.backbone, pretrained=False).requires_grad_(False).eval(),
                         keep_for_ratio(full, args.ratio, args.seed, args.multiple_of))
    result = {"backbone": args.backbone, "input_seconds": args.input_seconds, "ratio": args.ratio,
              "removed": 1 - trimmed.param_count() / full.param_count(), "multiple_of": args.multiple_of,
              "threads": args.threads, "repeats": args.repeats,
              **compare(full, trimmed, full.example_input(args.input_seconds, 1), args.repeats, threads=args.threads)}
    write_json(args.json, result)
    print({k: result[k] for k in ("flops_ratio", "speedup", "wall_ms", "operators_ms", "outside_operators_ms")})
    for row in result["operators"]:
        print(f"{row['operator']:>48} full {row['full_ms']:8.2f} ms  trimmed {row['trimmed_ms']:7.2f} ms  "
              f"shrink {row['shrink'] or float('nan'):5.2f}")
    return result


if __name__ == "__main__":
    main()

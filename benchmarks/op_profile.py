"""Where a trimmed model's time goes: CPU time per operator, full model against trimmed, next to the FLOPs ratio.

`benchmarks/speedup.py` measures speed-up / FLOPs ratio; where it falls below 1, this says which operators do not
shrink with the FLOPs. Random weights and uniformly random masks (speedup.keep_for_ratio), batch 1. For each
model: the median wall time of a forward pass (the two models alternated, kwyn.profile.latency_ms); the time inside operators (torch.profiler's self CPU time,
summed per run) and the rest (Python, dispatch, allocation: wall - operators); per operator, its time in the
full and the trimmed model and how much it shrank (full / trimmed), against the FLOPs ratio.

    python benchmarks/op_profile.py --backbone wav2vec2-base --input-seconds 4 --ratio 0.75 --multiple-of 8 \
        --json benchmarks/results/op_profile_wav2vec2-base.json

In PyTorch, operators are also summed by kind (matrix products, convolutions, attention), each kind's FLOPs
(torch.utils.flop_counter, attention counted eagerly as kwyn.profile does) next to its time: per kind, how far the
time shrinks against the FLOPs, and the rate (GFLOP/s) of each kind in either model. A kind whose time shrinks
with its FLOPs lost no kernel efficiency; where the whole model still falls short of the FLOPs ratio, the kinds
run at different rates and trimming removed more of the faster kind's FLOPs.

With --runtime onnxruntime, the same for the two models exported (kwyn.export, with benchmarks/onnx_speed.py's MLP
head) and run by ONNX Runtime: wall time by kwyn.export.onnx_latency_ms, time per operator type from ONNX
Runtime's own profiler (its node events, op type as the graph optimiser left it: FusedMatMul, nchwc Conv, ...).
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


# the kind of a profiled operator (torch.profiler's name) and of a counted one (FlopCounterMode's): attention is
# one SDPA operator when run, and batched products (bmm) when counted eagerly
KINDS = {"matmul": ("aten::addmm", "aten::mm", "aten.addmm", "aten.mm"),
         "convolution": ("aten::mkldnn_convolution", "aten::convolution", "aten.convolution"),
         "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten.bmm")}


def kind_of(operator: str) -> str | None:
    return next((kind for kind, names in KINDS.items() if operator in names), None)


@torch.no_grad()
def gflops_by_kind(model, example) -> dict[str, float]:
    """GFLOPs per operator kind of one forward pass (attention eager, as kwyn.profile.flops counts it)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with profile.eager_attention(model), counter:
        model(example)
    totals: dict[str, float] = {}
    for op, count in counter.get_flop_counts()["Global"].items():
        kind = kind_of(str(op)) or "other"
        totals[kind] = totals.get(kind, 0.0) + count / 1e9
    return totals


def by_kind(ops: dict[str, dict[str, float]], gflops: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per kind: time and GFLOPs in the full and the trimmed model, their shrinks and the rates (GFLOP/s)."""
    rows = {}
    for kind in KINDS:
        ms = {name: sum(t for op, t in ops[name].items() if kind_of(op) == kind) for name in ("full", "trimmed")}
        work = {name: gflops[name].get(kind, 0.0) for name in ("full", "trimmed")}
        if not (ms["trimmed"] and work["trimmed"]):
            continue
        rows[kind] = {"full_ms": ms["full"], "trimmed_ms": ms["trimmed"], "full_gflops": work["full"],
                      "trimmed_gflops": work["trimmed"], "time_shrink": ms["full"] / ms["trimmed"],
                      "flops_shrink": work["full"] / work["trimmed"],
                      "full_gflop_per_s": work["full"] / ms["full"] * 1e3,
                      "trimmed_gflop_per_s": work["trimmed"] / ms["trimmed"] * 1e3}
    return rows


def onnx_operator_ms(session_path: Path, example, repeats: int, threads: int) -> dict[str, float]:
    """Time per operator type in ONNX Runtime (its profiler's node events), ms per run (mean over `repeats` runs)."""
    import json

    from kwyn import export

    session = export.onnx_session(session_path, threads, enable_profiling=True,
                                  profile_file_prefix=str(session_path.with_suffix("")))
    feed = {"audio": example.numpy()}
    for _ in range(1 + repeats):  # the first run plans memory: left out below
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_counted = sorted(e["ts"] for e in runs)[-repeats]  # the warm-up run's nodes are left out
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_counted:
            op = e["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1e3 / repeats
    return totals


def compare(full, trimmed, example, repeats: int = 10, warmup: int = 3, threads: int = 2, top: int = 12,
            runtime: str = "torch") -> dict:
    """Wall time (medians, the two models alternated) and per-operator time of `full` and `trimmed` on `example`,
    in PyTorch or (runtime "onnxruntime") exported and run by ONNX Runtime."""
    kinds = None  # per kind: PyTorch only (ONNX Runtime's fused operators mix the kinds)
    if runtime == "onnxruntime":
        import tempfile

        from onnx_speed import with_head

        from kwyn import export

        with tempfile.TemporaryDirectory() as tmp:
            paths = {name: export.export_onnx(with_head(m), Path(tmp) / f"{name}.onnx",
                                              seconds=example.shape[1] / m.sample_rate)
                     for name, m in (("full", full), ("trimmed", trimmed))}
            sessions = {name: export.onnx_session(path, threads) for name, path in paths.items()}
            walls = export.onnx_latency_ms(sessions, example.numpy(), repeats, warmup)
            ops = {name: onnx_operator_ms(path, example, repeats, threads) for name, path in paths.items()}
    else:
        with torch.inference_mode():
            walls = profile.latency_ms({"full": full, "trimmed": trimmed}, example, repeats, warmup, threads)
            ops = {name: operator_ms(m, example, repeats) for name, m in (("full", full), ("trimmed", trimmed))}
        kinds = by_kind(ops, {name: gflops_by_kind(m, example) for name, m in (("full", full), ("trimmed", trimmed))})
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
        **({"kinds": kinds} if kinds is not None else {}),
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
    parser.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch")
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
              "threads": args.threads, "repeats": args.repeats, "runtime": args.runtime,
              **compare(full, trimmed, full.example_input(args.input_seconds, 1), args.repeats, threads=args.threads,
                        runtime=args.runtime)}
    write_json(args.json, result)
    print({k: result[k] for k in ("flops_ratio", "speedup", "wall_ms", "operators_ms", "outside_operators_ms")})
    for row in result["operators"]:
        print(f"{row['operator']:>48} full {row['full_ms']:8.2f} ms  trimmed {row['trimmed_ms']:7.2f} ms  "
              f"shrink {row['shrink'] or float('nan'):5.2f}")
    for kind, row in result.get("kinds", {}).items():
        print(f"{kind:>12}: time shrinks {row['time_shrink']:5.2f}, FLOPs {row['flops_shrink']:5.2f}; "
              f"GFLOP/s full {row['full_gflop_per_s']:6.1f}, trimmed {row['trimmed_gflop_per_s']:6.1f}")
    return result


if __name__ == "__main__":
    main()

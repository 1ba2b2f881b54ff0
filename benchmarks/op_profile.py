"""Where a trimmed model's time goes: CPU time per operator, full model against trimmed, next to the FLOPs ratio.

`benchmarks/speedup.py` measures speed-up / FLOPs ratio; where it falls below 1, this says which operators do not
shrink with the FLOPs. Random weights and uniformly random masks (speedup.keep_for_ratio), batch 1. For each
model: the median wall time of a forward pass (the two models alternated, kwyn.profile.latency_ms); the time inside operators (torch.profiler's self CPU time,
summed per run) and the rest (Python, dispatch, allocation: wall - operators); per operator, its time in the
full and the trimmed model and how much it shrank (full / trimmed), against the FLOPs ratio.

    python benchmarks/op_profile.py --backbone wav2vec2-base --input-seconds 4 --ratio 0.75 --multiple-of 8 \
        --json benchmarks/results/op_profile_wav2vec2-base.json

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
    return result


if __name__ == "__main__":
    main()

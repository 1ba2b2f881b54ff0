"""Device-hours of the paper grid, from measured step times (benchmarks/train_step.py JSONs).

    python benchmarks/grid_cost.py --json benchmarks/results/grid_cost_cpu.json

hours(run) = steps(method) x step_s(backbone, method) x scale / 3600, summed over
models x datasets x methods x ratios, where
  step_s = mask_step_s                       for base, ssf, kwyn (frozen encoder: forward + backward through
                                             its activations; an upper bound for base, which stops at the head)
  step_s = finetune_step_s x cost(ratio)     for scratch (every weight trained; cost = 1 / flops_ratio of the
                                             trimmed encoder at that ratio from benchmarks/results/speedup_<b>.json
                                             when it has that ratio, else 1)
  scale  = (batch x input_seconds) / (measured batch x measured input_seconds) when --batch / --input-seconds
           are given (linear in audio per step: optimistic for attention on long clips), else 1.
A step time holds for the device it was measured on: the JSON's `device` (train_step.py writes none: cpu).
Not counted: validation, data preparation, evaluation, repeated seeds or folds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER_MODELS = ("clap-cnn14=esc50,us8k,fsd50k", "musicfm=mtt,gtzan,nsynth",
                "wav2vec2-base=fsc,librispeech,speech_commands")
METHODS = ("base", "ssf", "kwyn", "scratch")
RATIO_METHODS = ("kwyn", "scratch")  # one run per ratio; base and ssf: one run


def load_step_times(paths: list[Path]) -> dict[str, dict]:
    rows = {}
    for path in paths:
        row = json.loads(Path(path).read_text())
        path = Path(path).resolve()
        shown = path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path
        rows[row["backbone"]] = {**row, "file": str(shown)}
    return rows


def flops_ratio(backbone: str, ratio: float) -> float | None:
    path = RESULTS / f"speedup_{backbone}.json"
    if not path.exists():
        return None
    for row in json.loads(path.read_text()):
        if abs(row["ratio"] - ratio) < 1e-9:
            return row["flops_ratio"]
    return None


def grid_cost(models: dict[str, list[str]], methods: list[str], ratios: list[float], mask_steps: int,
              scratch_steps: int, step_times: dict[str, dict], batch: int | None = None,
              input_seconds: float | None = None) -> dict:
    runs = []
    for backbone, datasets in models.items():
        if backbone not in step_times:
            raise SystemExit(f"no step time for {backbone}: run benchmarks/train_step.py --backbone {backbone}")
        measured = step_times[backbone]
        scale = ((batch or measured["batch"]) * (input_seconds or measured["input_seconds"])
                 / (measured["batch"] * measured["input_seconds"]))
        for dataset in datasets:
            for method in methods:
                for ratio in (ratios if method in RATIO_METHODS else [None]):
                    if method == "scratch":
                        fr = flops_ratio(backbone, ratio)
                        step_s, steps, note = measured["finetune_step_s"] / (fr or 1.0), scratch_steps, (
                            f"finetune_step_s / flops_ratio {fr}" if fr else "finetune_step_s (no flops ratio)")
                    else:
                        step_s, steps, note = measured["mask_step_s"], mask_steps, "mask_step_s"
                    step_s *= scale
                    runs.append({"backbone": backbone, "dataset": dataset, "method": method, "ratio": ratio,
                                 "steps": steps, "step_s": round(step_s, 5), "step_time": note,
                                 "hours": round(steps * step_s / 3600, 3)})
    by = {key: {} for key in ("backbone", "method")}
    for run in runs:
        for key in by:
            by[key][run[key]] = round(by[key].get(run[key], 0.0) + run["hours"], 2)
    devices = sorted({str(t.get("device", "cpu")) for t in step_times.values()})
    threads = sorted({t.get("threads") for t in step_times.values() if t.get("threads") is not None})
    return {"device": ", ".join(devices), "threads": threads,
            "measured": {b: {k: t[k] for k in ("file", "batch", "input_seconds", "mask_step_s", "finetune_step_s")}
                         for b, t in step_times.items() if b in models},
            "grid": {"models": models, "methods": methods, "ratios": ratios, "mask_steps": mask_steps,
                     "scratch_steps": scratch_steps, "batch": batch, "input_seconds": input_seconds},
            "formula": "hours = steps x step_s / 3600; step_s = mask_step_s (base, ssf, kwyn) or finetune_step_s"
                       " / flops_ratio(ratio) (scratch), x (batch x input_seconds) / measured",
            "runs_count": len(runs), "hours_by_backbone": by["backbone"], "hours_by_method": by["method"],
            "total_hours": round(sum(r["hours"] for r in runs), 1), "runs": runs}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--step-times", nargs="+", type=Path,
                        default=[RESULTS / f"train_step_{m.split('=')[0]}.json" for m in PAPER_MODELS])
    parser.add_argument("--model", action="append", metavar="BACKBONE=DS1,DS2,...",
                        help=f"repeatable; default: {' '.join(PAPER_MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default="0.25,0.5,0.75", help="trimming ratios of kwyn and scratch")
    parser.add_argument("--mask-steps", type=int, default=100_000, help="steps of base, ssf and kwyn runs")
    parser.add_argument("--scratch-steps", type=int, default=25_000)
    parser.add_argument("--batch", type=int, default=None, help="scale to this batch (default: as measured)")
    parser.add_argument("--input-seconds", type=float, default=None, help="scale to this clip length")
    args = parser.parse_args(argv)

    models = {m.split("=")[0]: m.split("=")[1].split(",") for m in (args.model or PAPER_MODELS)}
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    result = grid_cost(models, methods, [float(r) for r in args.ratios.split(",")], args.mask_steps,
                       args.scratch_steps, load_step_times(args.step_times), args.batch, args.input_seconds)
    print(f"device: {result['device']} (threads {result['threads']}); {result['runs_count']} runs")
    for key in ("hours_by_backbone", "hours_by_method"):
        print(f"{key}: {result[key]}")
    print(f"total: {result['total_hours']} device-hours")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Validation once the target ratio is reached, against 0.8 x base: issue F's "no validation after the ramp below
0.8 x base", read from the runs of the active grid (runs/<experiment>/history.csv).

For every experiment with a target ratio, the ramp ends at step mask_start + ratio_ramp x mask steps (the recipe's
head warm-up comes first: kwyn.recipe.Schedule; HardConcrete ramps its target over hardconcrete.ratio_ramp); every
validation from there on counts. base = the mean selected validation score of the base runs of the same backbone,
dataset and task (over their seeds).

    python benchmarks/validation_after_ramp.py --json benchmarks/results/validation_after_ramp.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from kwyn.io import read_json  # noqa: E402
from kwyn.params import experiment, experiment_names, load_params  # noqa: E402
from kwyn.recipe import Schedule  # noqa: E402

RULE = 0.8  # validation after the ramp must stay at or above this share of base's


def ramp_end(exp) -> int:
    """The first step at which the run's target ratio is fully asked for."""
    schedule = Schedule.of(exp.train.steps, exp.recipe)
    ramp = exp.hardconcrete.ratio_ramp if exp.hardconcrete is not None else exp.sparsity.ratio_ramp
    return schedule.mask_start + round(ramp * schedule.mask_steps)


def rows(runs: Path) -> list[dict]:
    params = load_params()
    exps = [experiment(name, params) for name in experiment_names(params)]
    base = {}
    for exp in exps:
        summary = runs / exp.name / "summary.json"
        if exp.method == "base" and summary.exists():
            base.setdefault((exp.backbone, exp.dataset, exp.task), []).append(
                read_json(summary)["selected"]["val_metric"])
    out = []
    for exp in exps:
        history = runs / exp.name / "history.csv"
        if exp.target_ratio is None or not history.exists():
            continue
        h = pd.read_csv(history)
        end = ramp_end(exp)
        after = h[h.step >= end]
        base_val = sum(base.get((exp.backbone, exp.dataset, exp.task), [math.nan])) / max(
            1, len(base.get((exp.backbone, exp.dataset, exp.task), [])))
        out.append({"experiment": exp.name, "config": re.sub(r"_seed\d+$", "", exp.name), "method": exp.method,
                    "target_ratio": exp.target_ratio, "ramp_end_step": end,
                    "val_min_after_ramp": float(after.val_metric.min()) if len(after) else None,
                    "step_of_min": int(after.step[after.val_metric.idxmin()]) if len(after) else None,
                    "base_val": base_val, "threshold": RULE * base_val,
                    "holds": bool(len(after)) and float(after.val_metric.min()) >= RULE * base_val})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    found = rows(args.runs)
    args.json.write_text(json.dumps(found, indent=1) + "\n")
    frame = pd.DataFrame(found)
    by_config = frame.groupby("config", sort=False).agg(
        seeds=("experiment", "size"), val_min_after_ramp=("val_min_after_ramp", "min"),
        worst_seed_min=("val_min_after_ramp", "max"), threshold=("threshold", "first"), holds=("holds", "all"))
    by_config = by_config.rename(columns={"val_min_after_ramp": "lowest (any seed)",
                                          "worst_seed_min": "highest seed minimum"})
    text = (f"Validation after the ramp against {RULE} x base (`{Path(__file__).name}`): per configuration, the lowest "
            "validation score from the end of the ratio ramp on, over its seeds.\n\n"
            + by_config.to_markdown(floatfmt=".3f") + "\n")
    args.json.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

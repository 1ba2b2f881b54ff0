"""What a CPU budget buys: kwyn runs of params.yaml experiments at several step budgets, recipes and seeds.

For each (experiment, recipe, steps, seed) it trains a kwyn run from scratch in --runs (kept, so a
second call with more budgets reuses what exists), then scores the selected (masked) model on the
validation and test splits. The masked model's outputs are the trimmed model's (tests/trimming.py
checks it for every backbone), so no trim stage is needed here. Recipes are selected on validation;
test is reported beside it.

    python benchmarks/convergence.py --experiments whisper_word_kwyn_75 --steps 100 200 400 \\
        --recipe paper --recipe fast:head_warmup=0.1,distill=1,refit=0.2 --json out.json
    python benchmarks/convergence.py --experiments whisper_word_hardconcrete_75 --steps 200 \\
        --hardconcrete lr=0.2,init_drop=0.5 --json out.json      # HardConcrete's start settings

Each JSON row: experiment, recipe, steps, seed, target and achieved ratio, best and after-ramp-minimum
validation metric, validation and test metric of the selected model, train seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MAX_NAME = 200  # characters of a run folder's name
sys.path.insert(0, str(ROOT))

from kwyn import pipeline  # noqa: E402
from kwyn.data.prepare import PreparedDataset  # noqa: E402
from kwyn.metrics import task_type  # noqa: E402
from kwyn.model import predict  # noqa: E402
from kwyn.params import Recipe  # noqa: E402
from kwyn.runs import load_trained  # noqa: E402
from kwyn.train import train  # noqa: E402


def parse_recipe(text: str) -> tuple[str, dict | None]:
    """'paper' -> ('paper', None); 'fast:head_warmup=0.1,distill=1' -> ('fast', {...})."""
    name, _, spec = text.partition(":")
    if not spec:
        return name, None
    values = dict(item.split("=", 1) for item in spec.split(","))
    return name, Recipe(**{k: v if k == "init" else json.loads(v) for k, v in values.items()}).model_dump()


def parse_keys(text: str) -> dict:
    """'mask_lr=0.2,precision="bf16"' -> {"mask_lr": 0.2, "precision": "bf16"}: each value read as JSON."""
    return {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in text.split(",") if kv)}


def with_block(exp, block: str, values: dict | None):
    """exp with keys of one of its blocks (sparsity, hardconcrete) replaced, validated as params.yaml's would be."""
    if not values:
        return exp
    current = getattr(exp, block, None)
    if current is None:
        raise ValueError(f"{exp.name} has no {block} block to change (its method is {exp.method})")
    return exp.model_copy(update={block: type(current).model_validate({**current.model_dump(by_alias=True),
                                                                       **values})})


def run_one(name: str, recipe: dict | None, steps: int, seed: int, runs: Path, train_overrides: dict,
            sparsity_overrides: dict | None = None, hardconcrete_overrides: dict | None = None) -> dict:
    exp = with_block(with_block(pipeline.experiment(name), "sparsity", sparsity_overrides),
                     "hardconcrete", hardconcrete_overrides)
    train_cfg = exp.train.model_copy(update={"steps": steps, "seed": seed,
                                             "eval_every": max(1, steps // 8), "checkpoint_every": steps,
                                             **train_overrides})
    exp = exp.model_copy(update={"train": train_cfg, "recipe": Recipe(**recipe) if recipe else None})
    data = pipeline.data_dir(exp.dataset) / "prepared"
    run_dir = runs / run_folder(f"{name}__{json.dumps(recipe, sort_keys=True) if recipe else 'paper'}__{steps}__"
                                f"{seed}__{json.dumps(train_overrides, sort_keys=True)}"
                                f"{json.dumps(sparsity_overrides or {})}"
                                + (f"__hc{json.dumps(hardconcrete_overrides, sort_keys=True)}"
                                   if hardconcrete_overrides else ""))
    started = time.perf_counter()
    summary = train(exp, data, run_dir, progress=False)
    seconds = time.perf_counter() - started  # near 0 when the run existed
    model, _, best = load_trained(exp, run_dir)
    scores = {}
    for split in ("valid", "test"):
        dataset = PreparedDataset(data, split, exp.task)
        _, ttype = task_type(dataset, name)
        scores[split] = ttype.score(predict(model, dataset, 32), dataset)[ttype.primary]
    history = [json.loads(json.dumps(row)) for row in _history(run_dir)]
    ramp_end = exp.sparsity.ratio_ramp if exp.sparsity else exp.hardconcrete.ratio_ramp if exp.hardconcrete else 0
    after_ramp = [r["val_metric"] for r in history if r["trim_ratio"] >= 0.98 * (exp.target_ratio or 0)
                  and r["step"] >= ramp_end * steps]
    return {"experiment": name, "recipe": recipe, "steps": steps, "seed": seed, "target_ratio": exp.target_ratio,
            "trim_ratio": best["row"]["trim_ratio"], "selected_step": best["row"]["step"],
            "val_selected": best["row"]["val_metric"], "val_min_after_ramp": min(after_ramp, default=None),
            "valid": scores["valid"], "test": scores["test"],
            # the run's own time (summary.json keeps it when an existing run is reused), with its evaluation
            "train_seconds": summary["train_seconds"], "reused": summary["train_seconds"] > seconds + 1}


def run_folder(spec: str) -> str:
    """A run's folder name: its settings with path-safe characters; past MAX_NAME characters (file systems refuse
    names over 255 bytes) a prefix of them and a hash of the whole, so that runs of other settings never share one."""
    folder = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec)
    if len(folder) > MAX_NAME:
        folder = folder[:MAX_NAME - 18] + "__" + hashlib.sha256(spec.encode()).hexdigest()[:16]
    return folder


def _history(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "history.csv") as f:
        return [{k: float(v) if v not in ("", None) and k != "phase" else v for k, v in row.items()}
                for row in csv.DictReader(f)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", help="kwyn experiments of params.yaml")
    parser.add_argument("--steps", nargs="+", type=int)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--recipe", action="append", default=None,
                        help="'paper', or NAME:head_warmup=..,distill=..,refit=.. (repeatable)")
    parser.add_argument("--train", default="", help="other train keys for every run, e.g. mask_lr=0.1")
    parser.add_argument("--sparsity", default="", help="sparsity keys for every run, e.g. ratio_ramp=0.8")
    parser.add_argument("--hardconcrete", default="", help="hardconcrete keys for every run (hardconcrete "
                        "experiments), e.g. lr=0.2,init_drop=0.5")
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs")
    parser.add_argument("--json", type=Path, required=True, help="rows are appended to this file's list")
    parser.add_argument("--report", type=Path, help="write <this>.png (budget figure) and <this>.md (ablation "
                        "table) from every row of --json, then stop (no training)")
    parser.add_argument("--figure", nargs="+", default=["paper", "converge"],
                        help="with --report: the recipe names (as given to --recipe) the budget figure shows")
    args = parser.parse_args(argv)
    if args.report:
        rows = json.loads(args.json.read_text())
        _base_scores()
        plot_budgets([r for r in rows if r["recipe_name"] in args.figure], args.report.with_suffix(".png"))
        args.report.with_suffix(".md").write_text(ablation_table(rows) + "\n")
        return
    overrides, sparsity, hardconcrete = (parse_keys(text) for text in (args.train, args.sparsity, args.hardconcrete))
    recipes = [parse_recipe(r) for r in (args.recipe or ["paper"])]
    rows = json.loads(args.json.read_text()) if args.json.exists() else []
    torch.set_num_threads(2)
    for name in args.experiments:
        for label, recipe in recipes:
            for steps in args.steps:
                for seed in args.seeds:
                    row = {"recipe_name": label, **run_one(name, recipe, steps, seed, args.runs, overrides, sparsity,
                                                           hardconcrete),
                           "train": overrides, "sparsity": sparsity, **({"hardconcrete": hardconcrete}
                                                                         if hardconcrete else {})}
                    rows = [r for r in rows if not _same(r, row)] + [row]
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(rows, indent=1))
                    print(f"{name} {label} steps={steps} seed={seed}: ratio {row['trim_ratio']:.3f} "
                          f"val {row['val_selected']:.3f} (min after ramp {row['val_min_after_ramp']}) "
                          f"test {row['test']:.3f} in {row['train_seconds']} s", flush=True)


def plot_budgets(rows: list[dict], path: Path) -> None:
    """Test metric against training steps (log scale), one panel per experiment, one line per recipe; the
    validation-selected model of each run, seeds averaged with their min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["recipe_name"] = frame.recipe_name.fillna("paper")
    names = list(dict.fromkeys(frame.experiment))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, (label, g) in enumerate(frame[frame.experiment == name].groupby("recipe_name", sort=False)):
            stats = g.groupby("steps").test.agg(["mean", "min", "max"]).sort_index()
            ax.errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        marker="o", capsize=3, color=f"C{i}", label=label)
        base = BASE_SCORES.get(name.rsplit("_kwyn", 1)[0])
        if base is not None:
            ax.axhline(base, color="grey", ls="--", label="base")
        budgets = sorted(frame[frame.experiment == name].steps.unique())
        ax.set(xscale="log", title=name, xlabel="mask-training steps (log scale)", ylabel="test weighted accuracy",
               ylim=(0, 1.02))
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def setting_text(row: dict) -> str:
    """What a row changed from the paper's loop: its recipe's non-default keys, then train and sparsity keys."""
    defaults = Recipe().model_dump()
    recipe = {k: v for k, v in (row.get("recipe") or {}).items() if v != defaults[k] and k != "init_batches"}
    parts = [f"{k}={v}" for k, v in {**recipe, **(row.get("train") or {}), **(row.get("sparsity") or {}),
                                     **(row.get("hardconcrete") or {})}.items()]
    return " ".join(parts) or "paper's loop"


def ablation_table(rows: list[dict]) -> str:
    """A markdown table: one row per (experiment, recipe, steps), seeds averaged; validation first (what recipes
    are chosen on: val_selected on the run's validation examples, valid on the whole split), test beside it."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["setting"] = [setting_text(row) for row in rows]
    table = frame.groupby(["experiment", "setting", "steps"], sort=False).agg(
        seeds=("seed", "count"), ratio=("trim_ratio", "mean"), val_selected=("val_selected", "mean"),
        valid=("valid", "mean"),
        val_min_after_ramp=("val_min_after_ramp", "mean"), test=("test", "mean"), test_min=("test", "min"),
        test_max=("test", "max"), train_s=("train_seconds", "median")).reset_index()
    return table.to_markdown(index=False, floatfmt=".3f")


BASE_SCORES: dict[str, float] = {}  # filled from metrics/<prefix>_base*.json where present (mean over seeds)


def _base_scores() -> None:
    for path in sorted((ROOT / "metrics").glob("*_base*.json")):
        result = json.loads(path.read_text())
        prefix = re.sub(r"_base(_seed\d+)?$", "", path.stem)
        BASE_SCORES.setdefault(prefix, [])
        BASE_SCORES[prefix].append(result["test"][result["metric"]])
    for prefix, scores in list(BASE_SCORES.items()):
        BASE_SCORES[prefix] = sum(scores) / len(scores)


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("experiment", "recipe", "steps", "seed", "train", "sparsity",
                                              "hardconcrete"))


if __name__ == "__main__":
    main()

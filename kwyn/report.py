"""Tables and figures from the evaluation results (metrics/<experiment>.json), in the paper's shape.

Reads one result dict per experiment and writes:
- tables/results.{md,csv}: one row per result (a lottery run gives one row per round), every metric.
- tables/table1.{md,csv,tex}: the paper's Table I, one row per (model, dataset, task): base, SSF, scratch and
  ours at 25/50/75 % of encoder parameters removed, the best trimming, and the related methods (lottery, convexity).
- tables/table2.{md,csv,tex}: the paper's Table II, per model: base cost, and the fastest trimmed model within
  5 % relative drop of the base model's score (select_fastest_within), per task and averaged per task kind.
- figures/*.png: metric vs trimming, kept units per layer and site kind, metric vs latency (Pareto),
  overlap of the masks of one backbone across tasks, convexity score per layer.
Both tables carry the paper's own numbers (reference/paper_table{1,2}.csv) in rows with source == "paper".

Each row is scored by its own primary metric (result["metric"]: weighted_accuracy for classification, mAP for
tagging, wer for ASR) in the `score` column. `higher_is_better` gives its direction (WER: lower is better);
delta_vs_base is signed by it (positive = better than base) and relative_drop likewise (positive = worse).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from kwyn.io import atomic_path  # noqa: E402
from kwyn.methods import METHODS as REGISTRY  # noqa: E402


METRIC_LABELS = {"weighted_accuracy": "weighted accuracy", "mAP": "mAP", "wer": "WER (lower is better)"}
METHODS = list(REGISTRY)  # the report's order: the registry's
TRIMMED_METHODS = [name for name, m in REGISTRY.items() if m.selectable]  # Table II selects among their models
MASK_FIGURE_METHOD = "kwyn"  # the kept-units and mask-overlap figures show the paper's masks
RATIOS_PCT = (25, 50, 75)  # the paper's Table I columns
RATIO_TOLERANCE_PCT = 2.0  # a run without target_ratio fills the XX % column if it removed XX +- 2 %
MAX_RELATIVE_DROP = 0.05  # the paper's Table II rule
TASK_KINDS = {"classification": "classif", "tagging": "tagging", "asr": "asr"}  # paper's Table II variant names
GROUP = ["model", "dataset", "task"]
NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------------
# one row per result


def recipe_text(result: dict) -> str:
    """'warm-up 100 distil 1 re-fit 100 mask lr 0.2' (steps, weight, steps; 'ramp re-fit 50', 'cached re-fit
    300', 'cached standardised re-fit 300'; 'ramp to the end': sparsity.ratio_ramp 1) for a kwyn run with a recipe (kwyn.recipe), '' for the
    paper's loop (a recipe with every option off trains exactly as the paper's loop)."""
    recipe = result.get("recipe") or {}
    ramp = result.get("ratio_ramp")
    parts = [f"warm-up {recipe['head_warmup']}" if recipe.get("head_warmup") else "",
             f"distil {recipe['distill']:g}{' frames' if recipe.get('distill_frames') else ''}"
             if recipe.get("distill") else "",
             "ramp to the end" if ramp == 1 else "",
             f"ramp re-fit {recipe['ramp_refit']}" if recipe.get("ramp_refit") else "",
             f"{'cached ' if recipe.get('refit_cache') else ''}{'standardised ' if recipe.get('refit_standardize') else ''}"
             f"re-fit {recipe['refit']}" if recipe.get("refit") else "",
             "importance init" if recipe.get("init", "constant") != "constant" else ""]
    if any(parts) and result.get("mask_lr") is not None:
        parts.append(f"mask lr {result['mask_lr']:g}")
    return " ".join(p for p in parts if p)


def setting(result: dict) -> str:
    method = REGISTRY.get(result["method"])
    return method.setting(result) if method is not None else result["method"]


def expand_rounds(results: list[dict]) -> list[dict]:
    """A lottery result stands for its rounds: each round is a model of its own (the curve of metric vs ratio)."""
    out = []
    for r in results:
        if r.get("rounds"):
            top = {k: v for k, v in r.items() if k != "rounds"}
            out += [{**top, **round_result} for round_result in r["rounds"]]
        else:
            out.append(r)
    return out


def results_frame(results: list[dict]) -> pd.DataFrame:
    def row(r: dict) -> dict:
        test, masked = r["test"], r.get("test_masked") or {}
        if r.get("masked_check_clips", r.get("test_clips")) != r.get("test_clips"):
            masked = {}  # the masked model saw a sample of the split (profile.masked_check_clips): no split score
        target = r.get("target_ratio")
        return {"experiment": r["experiment"], "model": r["backbone"], "dataset": r["dataset"], "task": r["task"],
                "task_type": r.get("task_type", "classification"), "method": r["method"], "setting": setting(r),
                "recipe": recipe_text(r), "seed": r.get("seed", 0), "precision": r.get("precision", "fp32"),
                "round": r.get("round"), "target_pct": NAN if target is None else 100 * target,
                "trim_pct": 100 * r["trim_ratio"], "metric": r["metric"], "score": test[r["metric"]],
                "masked_score": masked.get(r["metric"], NAN),
                "w_acc": test.get("weighted_accuracy", NAN), "macro_acc": test.get("macro_accuracy", NAN),
                "roc_auc": test.get("roc_auc", NAN), "cer": test.get("cer", NAN),
                "higher_is_better": r.get("higher_is_better", True),  # results written before ASR: both higher
                "masked_w_acc": masked.get("weighted_accuracy", NAN),
                "max_abs_diff": r.get("max_abs_diff_masked_vs_trimmed", NAN),
                "params_m": r["params"] / 1e6, "size_mb": r["size_mb"], "gflops": r["gflops"], "gmacs": r["gmacs"],
                "full_size_mb": r.get("full_size_mb", NAN), "full_gflops": r.get("full_gflops", NAN),
                "full_gmacs": r.get("full_gmacs", NAN), "latency_ms": r.get("latency_ms", NAN),
                "full_latency_ms": r.get("full_latency_ms", NAN), "speedup": r.get("speedup", NAN),
                "flops_ratio": r.get("flops_ratio", NAN), "input_seconds": r.get("input_seconds", NAN),
                "threads": r.get("threads")}

    frame = pd.DataFrame([row(r) for r in expand_rounds(results)])
    frame["round"] = frame["round"].astype("Int64")
    base = frame[frame.method == "base"].groupby(GROUP)[["score", "w_acc"]].mean()  # over its seeds
    for column in ("score", "w_acc"):
        frame[f"base_{column}"] = [base[column].get(key, NAN) for key in zip(*(frame[c] for c in GROUP))]
    sign = frame.higher_is_better.map({True: 1.0, False: -1.0})
    frame["delta_vs_base"] = sign * (frame.score - frame.base_score)
    frame["relative_drop"] = relative_drop(frame.score, frame.base_score, frame.higher_is_better)
    return frame.sort_values(GROUP + ["method", "trim_pct"], key=_method_order).reset_index(drop=True)


SEED_SPREAD = ["score", "trim_pct"]  # seed_means keeps their min, max and std beside the mean


def config_name(experiment: str) -> str:
    """The configuration an experiment repeats: its name without the grid's _seed<k> suffix (kwyn.grid)."""
    return re.sub(r"_seed\d+$", "", experiment)


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (config_name): the runs that differ only by their seed averaged.

    Numbers are means over the seeds (score, trimming ratio, cost, latency, speed-up); `seeds` counts them,
    score_min / score_max / score_std (and trim_pct_*) give the spread, `experiment` names the first seed's run.
    delta_vs_base and relative_drop are recomputed from the mean score and the mean base score.
    """
    if frame.empty:
        return frame
    keys = GROUP + ["config", "task_type", "method", "setting", "recipe", "round", "target_pct", "metric",
                    "higher_is_better"]
    frame = frame.assign(round=frame["round"].astype("float"), target_pct=frame.target_pct.fillna(-1),
                         config=frame.experiment.map(config_name))
    numeric = [c for c in frame.columns if c not in keys and c not in ("experiment", "seed", "threads")
               and pd.api.types.is_numeric_dtype(frame[c])]
    grouped = frame.sort_values("seed").groupby(keys, sort=False, dropna=False)
    out = grouped[numeric].mean()
    out["seeds"] = grouped.size()
    for column in SEED_SPREAD:
        out[f"{column}_min"] = grouped[column].min()
        out[f"{column}_max"] = grouped[column].max()
        out[f"{column}_std"] = grouped[column].std(ddof=0).where(out.seeds > 1)  # one seed has no spread
    out["experiment"] = grouped.experiment.first()
    out["threads"] = grouped.threads.first()
    out["precision"] = grouped.precision.first()
    out = out.reset_index()
    out["round"] = out["round"].astype("Int64")
    out["target_pct"] = out.target_pct.where(out.target_pct >= 0)
    sign = out.higher_is_better.map({True: 1.0, False: -1.0})
    out["delta_vs_base"] = sign * (out.score - out.base_score)
    out["relative_drop"] = relative_drop(out.score, out.base_score, out.higher_is_better)
    return out.sort_values(GROUP + ["method", "trim_pct"], key=_method_order).reset_index(drop=True)


def _method_order(column: pd.Series) -> pd.Series:
    if column.name != "method":
        return column
    return column.map(lambda m: METHODS.index(m) if m in METHODS else len(METHODS))


def relative_drop(score, base_score, higher_is_better):
    """(base - score) / base when higher is better, (score - base) / base when lower is (WER): positive = worse."""
    sign = np.where(higher_is_better, 1.0, -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sign * (np.asarray(base_score, float) - np.asarray(score, float)) / np.abs(base_score)


def results_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The long detail table: every result (every lottery round) with every metric next to the base's."""
    return frame[["model", "dataset", "task", "method", "setting", "experiment", "seed", "precision", "target_pct",
                  "trim_pct", "metric",
                  "higher_is_better", "score", "masked_score", "base_score", "delta_vs_base", "relative_drop",
                  "w_acc", "macro_acc", "base_w_acc", "roc_auc", "cer", "max_abs_diff", "params_m", "size_mb",
                  "gflops", "latency_ms", "full_latency_ms", "speedup"]].copy()


# ----------------------------------------------------------------------------------------------------------------
# Table I


def at_ratio(rows: pd.DataFrame, pct: float) -> pd.Series | None:
    """The run standing for "pct % removed": asked for it (target_ratio), else, with no target, removed pct +- 2 %.

    Among several, the one whose achieved ratio is closest to pct.
    """
    asked = rows[np.isclose(rows.target_pct, pct)]
    near = rows[rows.target_pct.isna() & ((rows.trim_pct - pct).abs() <= RATIO_TOLERANCE_PCT)]
    candidates = asked if len(asked) else near
    if candidates.empty:
        return None
    return candidates.loc[(candidates.trim_pct - pct).abs().idxmin()]


def best_row(rows: pd.DataFrame) -> pd.Series | None:
    """The paper's "Best": the run with the best test score; on a tie, the one that removed more."""
    if rows.empty:
        return None
    sign = 1.0 if rows.higher_is_better.iloc[0] else -1.0
    return rows.assign(_key=sign * rows.score).sort_values(["_key", "trim_pct"]).iloc[-1]


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table I: one row per (model, dataset, task); scores of each method at 25/50/75 % removed."""
    out = []
    for (model, dataset, task), g in frame.groupby(GROUP, sort=False):
        recipe = g.recipe
        by = {m: g[(g.method == m) & (recipe == "")] for m in METHODS}
        head = {"source": "kwyn", "model": model, "dataset": dataset, "task": task, "metric": g.metric.iloc[0],
                "higher_is_better": bool(g.higher_is_better.iloc[0]),
                "base": by["base"].score.iloc[0] if len(by["base"]) else NAN}
        row = {**head, "recipe": "", "ssf": by["ssf"].score.iloc[0] if len(by["ssf"]) else NAN}
        for name, method in TABLE1_RATIO_COLUMNS:
            row |= _at_ratios(by[name], method.table1_prefix)
        for name, method in TABLE1_BEST_COLUMNS:
            best = best_row(by[name])
            row[f"{method.table1_best}_trim_pct"] = NAN if best is None else best.trim_pct
            row[f"{method.table1_best}_score"] = NAN if best is None else best.score
        out.append(row)
        # each recipe in a row of its own, beside the paper's loop: same base, its own ours_XX
        for method, m in TABLE1_RATIO_COLUMNS:
            for name in dict.fromkeys(recipe[(g.method == method) & (recipe != "")]):
                runs = g[(g.method == method) & (recipe == name)]
                best = best_row(runs)
                out.append({**head, "recipe": name, **_at_ratios(runs, m.table1_prefix),
                            f"{m.table1_best}_trim_pct": best.trim_pct, f"{m.table1_best}_score": best.score})
    return pd.DataFrame(out)


# Table I's per-ratio columns (scratch_XX, ours_XX, ...) and best-run columns (best_*, lottery_best_*, ...), in
# the registry's order, which puts the paper's first
TABLE1_RATIO_COLUMNS = [(name, m) for name, m in REGISTRY.items() if m.table1_prefix]
TABLE1_BEST_COLUMNS = [(name, m) for name, m in REGISTRY.items() if m.table1_best]


def _at_ratios(rows: pd.DataFrame, prefix: str) -> dict:
    """{prefix_XX: score at XX %} for the Table I ratios, with the spread over seeds (prefix_XX_std) where known."""
    out = {}
    for pct in RATIOS_PCT:
        hit = at_ratio(rows, pct)
        out[f"{prefix}_{pct}"] = NAN if hit is None else hit.score
        if "score_std" in rows:
            out[f"{prefix}_{pct}_std"] = NAN if hit is None else hit.score_std
    return out


TABLE1_CAPTION = (
    "Table I: test score per model and task (score = the task's primary metric, column metric; higher_is_better "
    "gives its direction: WER is lower-is-better). base = frozen encoder + head; ssf = scale-and-shift at the mask "
    "sites, nothing removed; scratch_XX / ours_XX = the trimmed architecture trained from scratch / our masked-then-"
    "trimmed model with XX % of encoder parameters removed: the run trained for target ratio XX %, or, for runs "
    "without a target, the run whose achieved ratio is within 2 points of XX % (closest first); empty = no such run. "
    "best_trim_pct / best_score = as in the paper, the trimming ratio of our run with the best test score (over all "
    "our runs, any ratio; on a tie the larger ratio) and that score. lottery_best_* = the best round of iterative "
    "lottery-ticket trimming (same rule); convexity_* = convexity-based layer pruning. Ratios are achieved shares "
    "of encoder parameters removed (%). Rows with source = paper are the paper's own numbers (its models and "
    "datasets; WER in %), rows with source = kwyn are ours.")


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, as the README reads them: its seeds' mean score with their min-max, the points it
    gains over base (signed so that positive is better), what it removed and what that buys (frame: seed_means)."""
    rows = frame[frame["round"].isna() | (frame["round"] == frame.groupby("config")["round"].transform("max"))]
    out = pd.DataFrame({
        "model / task": rows.model + " / " + rows.task,
        # a kwyn setting names its recipe; training in bf16 autocast says so (evaluation is always fp32)
        "setting": rows.setting + rows.precision.map(lambda p: "" if p == "fp32" else f", {p} steps"),
        "seeds": rows.seeds,
        "removed %": rows.trim_pct.round(1),
        "score": [f"{m:.3f}" + (f" [{lo:.3f}-{hi:.3f}]" if n > 1 else "")
                  for m, lo, hi, n in zip(rows.score, rows.score_min, rows.score_max, rows.seeds)],
        "vs base (points)": (100 * rows.delta_vs_base).round(1).where(rows.method != "base"),
        "speed-up": rows.speedup.round(2), "GFLOPs": rows.gflops.round(3), "metric": rows.metric})
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Table II


def select_fastest_within(frame_or_rows, max_relative_drop: float = MAX_RELATIVE_DROP) -> pd.Series | None:
    """The paper's Table II rule: among trimmed models, the fastest (highest measured speed-up) whose relative drop
    from the base model's score is at most max_relative_drop. None when no candidate qualifies.

    Rows need score, base_score, higher_is_better and speedup; on a speed-up tie the better score wins.
    """
    rows = pd.DataFrame(frame_or_rows).reset_index(drop=True)
    if rows.empty:
        return None
    drop = relative_drop(rows.score, rows.base_score, rows.higher_is_better.astype(bool))
    # a float tolerance: a drop of exactly 5 % computed as 0.05000000001 still qualifies
    ok = rows[(drop <= max_relative_drop + 1e-12) & rows.speedup.notna()]
    if ok.empty:
        return None
    sign = np.where(ok.higher_is_better.astype(bool), 1.0, -1.0)
    return ok.assign(_score_key=sign * ok.score).sort_values(["speedup", "_score_key"]).iloc[-1].drop("_score_key")


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table II: per model, the base cost and, per method, the fastest model within 5 % relative drop,
    per task and averaged over the tasks of one kind (classification, tagging, ASR) as the paper does."""
    cost = ["size_mb", "gflops", "gmacs", "latency_ms", "speedup"]
    out = []
    for model, m in frame.groupby("model", sort=False):
        full = m.iloc[0]
        out.append({"source": "kwyn", "model": model, "variant": "base", "method": "base", "size_mb": full.full_size_mb,
                    "gflops": full.full_gflops, "gmacs": full.full_gmacs, "latency_ms": full.full_latency_ms,
                    "speedup": 1.0})
        recipes = m.recipe
        variants = [(method, recipe) for method in TRIMMED_METHODS
                    for recipe in dict.fromkeys(recipes[m.method == method])]
        for method, recipe in variants:
            picked = {}  # task kind -> selected rows
            name = (REGISTRY[method].table2_name or method) + ("+recipe" if recipe else "")
            chosen = m[(m.method == method) & (recipes == recipe)]
            for (dataset, task), g in chosen.groupby(["dataset", "task"], sort=False):
                best = select_fastest_within(g)
                row = {"source": "kwyn", "model": model, "variant": f"{name} ({dataset}/{task})", "method": method,
                       "recipe": recipe, "tasks": f"{dataset}/{task}", "task_type": g.task_type.iloc[0]}
                if best is None:
                    row["note"] = f"no {method} model within {100 * MAX_RELATIVE_DROP:g} % of base"
                else:
                    row |= {"experiment": best.experiment, "setting": best.setting, "trim_pct": best.trim_pct,
                            "score": best.score, "base_score": best.base_score,
                            "relative_drop_pct": 100 * best.relative_drop, **{c: best[c] for c in cost}}
                    picked.setdefault(best.task_type, []).append(row)
                out.append(row)
            for kind, rows in picked.items():
                mean = pd.DataFrame(rows)[cost + ["trim_pct"]].mean()
                out.append({"source": "kwyn", "model": model, "method": method, "recipe": recipe,
                            "variant": f"{name}-{TASK_KINDS.get(kind, kind)}",
                            "tasks": ", ".join(r["tasks"] for r in rows), "task_type": kind, **mean.to_dict(),
                            "note": f"mean over {len(rows)} task(s)"})
    columns = ["source", "model", "variant", "method", "recipe", "tasks", "task_type", "experiment", "setting", "trim_pct",
               "score", "base_score", "relative_drop_pct", *cost, "note"]
    return pd.DataFrame(out).reindex(columns=columns)


def table2_caption(frame: pd.DataFrame) -> str:
    lengths = ", ".join(sorted({f"{s:g} s" for s in frame.input_seconds.dropna()}))
    return ("Table II: encoder cost per model, at " + (lengths or "?") + " of input, batch 1. base = the full "
            "encoder. For each task and method (trim = ours, lottery, convexity), the row is the FASTEST model "
            "(highest measured speed-up) whose relative drop from the base model's score is at most 5 % ((base - "
            "score) / base, or (score - base) / base for WER); a row with a note and no numbers means no model "
            "qualified. Rows named <method>-<kind> average the selected models over the tasks of one kind, as the "
            "paper does (classif, tagging, asr). size = params x 4 bytes (MB = 10^6 B); FLOPs by "
            "torch.utils.flop_counter (GMACs = GFLOPs / 2); speed-up = median latency of the full encoder / "
            "trimmed encoder, alternated in one process. Rows with source = paper are the paper's own numbers "
            "(4 s input, its hardware).")


# ----------------------------------------------------------------------------------------------------------------
# the paper's numbers beside ours


def find_reference_dir(start: Path | None = None) -> Path | None:
    """reference/ in the project, or the shared reference beside it; None when neither holds the paper's tables."""
    root = Path(start) if start else Path(__file__).resolve().parent.parent
    for candidate in (root / "reference", root / "shared" / "reference", root.parent / "shared" / "reference"):
        if (candidate / "paper_table1.csv").exists():
            return candidate
    return None


def with_paper(ours: pd.DataFrame, paper_csv: Path | None) -> pd.DataFrame:
    if paper_csv is None or not Path(paper_csv).exists():
        return ours
    paper = pd.read_csv(paper_csv).assign(source="paper")
    if "higher_is_better" in paper:
        paper["higher_is_better"] = paper.higher_is_better.astype(bool)
    return pd.concat([paper, ours], ignore_index=True).reindex(columns=list(ours.columns))


# ----------------------------------------------------------------------------------------------------------------
# writing tables


def _write_table(table: pd.DataFrame, stem: Path, caption: str, latex: bool = True) -> None:
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    with atomic_path(stem.with_suffix(".md")) as tmp:
        blank = table.astype(object).where(table.notna(), None)  # missing cells print empty, not "nan"
        tmp.write_text(f"{caption}\n\n{blank.to_markdown(index=False, floatfmt='.4g', missingval='')}\n")
    if latex:
        with atomic_path(stem.with_suffix(".tex")) as tmp:
            tmp.write_text(_latex(table, caption, label=f"tab:{stem.name}"))


def _latex(table: pd.DataFrame, caption: str, label: str) -> str:
    body = table.to_latex(index=False, escape=True, na_rep="--", float_format=lambda x: f"{x:.4g}",
                          column_format="".join("r" if pd.api.types.is_numeric_dtype(t) and t != bool else "l"
                                                for t in table.dtypes))
    text = ("\\begin{table*}\n\\centering\n\\scriptsize\n\\caption{" + _latex_escape(caption) + "}\n\\label{"
            + label + "}\n" + body + "\\end{table*}\n")
    return text.replace("λ", r"$\lambda$")  # settings name the sparsity weight; pdflatex has no λ glyph


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


# ----------------------------------------------------------------------------------------------------------------
# figures


STYLE = {name: m.style for name, m in REGISTRY.items()}
RECIPE_STYLE = dict(color="C5", ls="--", marker="v")  # kwyn trained with a recipe (kwyn.recipe)
LABELS = {name: m.label for name, m in REGISTRY.items()}


def _axes(n: int, width: float = 5.5, height: float = 4.0):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _message_figure(path: Path, text: str) -> None:
    """A figure that says why there is nothing to plot: the set of figures stays the same whatever ran."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.axis("off")
    _save(fig, path)


def _ylabel(g: pd.DataFrame) -> str:
    return "test " + " / ".join(METRIC_LABELS.get(m, m) for m in dict.fromkeys(g.metric))


def plot_metric_vs_trimming(frame: pd.DataFrame, path: Path) -> None:
    groups = list(frame.groupby(GROUP, sort=False))
    fig, axes = _axes(len(groups))
    for ax, ((model, dataset, task), g) in zip(axes, groups):
        recipes = g.recipe
        for method in (name for name, m in REGISTRY.items() if m.removes_units):
            for recipe in dict.fromkeys(recipes[g.method == method]):
                rows = g[(g.method == method) & (recipes == recipe)]
                rows = rows.sort_values("round" if REGISTRY[method].in_rounds else "trim_pct")
                style = dict(STYLE[method], **(RECIPE_STYLE if recipe else {}))
                label = LABELS[method] + (f", {recipe}" if recipe else
                                          (", paper's loop" if "recipe" in REGISTRY[method].blocks else ""))
                ax.plot(rows.trim_pct, rows.score, label=label, **style)
                if "score_min" in rows and (rows.seeds > 1).any():  # the spread over seeds
                    ax.errorbar(rows.trim_pct, rows.score, yerr=[rows.score - rows.score_min,
                                                                 rows.score_max - rows.score],
                                fmt="none", ecolor=style["color"], capsize=3, alpha=0.8)
        for method in (name for name, m in REGISTRY.items() if not m.removes_units):  # a line: nothing removed
            for _, row in g[g.method == method].iterrows():
                ax.axhline(row.score, color=STYLE[method]["color"], ls=STYLE[method]["ls"], label=LABELS[method])
                if "score_min" in row and row.get("seeds", 1) > 1:
                    ax.axhspan(row.score_min, row.score_max, color=STYLE[method]["color"], alpha=0.12)
        ax.set(title=f"{model} / {dataset} {task}", xlabel="encoder parameters removed (%)", ylabel=_ylabel(g),
               xlim=(-2, 100))
        ax.legend(fontsize=7)
    _save(fig, path)


def layer_index(site: str, position: int) -> int:
    """A site's layer: the first integer in its name (conv3 -> 3, layers.2.ffn -> 2), else its position."""
    found = re.search(r"\d+", site)
    return int(found.group()) if found else position


def site_kind(result: dict, site: str) -> str:
    kinds = result.get("site_kinds") or {}
    if site in kinds:
        return kinds[site]
    # results written before site_kinds: guess from the name
    name = site.lower()
    if "attention" in name or "head" in name:
        return "attention_heads"
    if "ffn" in name or "feed_forward" in name or "intermediate" in name or "fc" in name:
        return "ffn_units"
    return "conv_channels" if "conv" in name else "units"


def kept_share(result: dict) -> pd.DataFrame:
    """Share of units kept, site kind (rows) x layer (columns), pooled over the sites of one layer and kind."""
    rows = [{"kind": site_kind(result, site), "layer": layer_index(site, i),
             "kept": result["kept_units"].get(site, units), "units": units}
            for i, (site, units) in enumerate(result["site_units"].items())]
    sums = pd.DataFrame(rows).groupby(["kind", "layer"])[["kept", "units"]].sum()
    return (sums.kept / sums.units).unstack("layer").sort_index(axis=1)


def closest_to(frame: pd.DataFrame, pct: float = 50.0) -> pd.DataFrame:
    """Per (model, dataset, task), the kwyn run closest to pct % removed: one mask to show per task. Where a
    model's tasks share a recipe, only its runs are candidates (the same training on every task, so that masks
    compare), the recipe ahead of the paper's loop."""
    kwyn = frame[frame.method == MASK_FIGURE_METHOD]

    def shared_recipe(g: pd.DataFrame) -> str | None:
        per_task = [set(t.recipe) for _, t in g.groupby(["dataset", "task"])]
        shared = set.intersection(*per_task)
        return max(shared, key=lambda r: (r != "", r)) if shared else None

    chosen = {model: shared_recipe(g) for model, g in kwyn.groupby("model")}
    kwyn = kwyn[np.array([chosen[m] is None or r == chosen[m] for m, r in zip(kwyn.model, kwyn.recipe)], bool)]
    return kwyn.loc[(kwyn.trim_pct - pct).abs().groupby([kwyn[c] for c in GROUP], sort=False).idxmin()]


def plot_kept_units(frame: pd.DataFrame, results: list[dict], path: Path) -> None:
    by_name = {r["experiment"]: r for r in results}
    chosen = closest_to(frame)
    if chosen.empty:
        return _message_figure(path, "no kwyn results: no learned masks to show")
    fig, axes = _axes(len(chosen), width=6.5, height=3.0)
    for ax, (_, row) in zip(axes, chosen.iterrows()):
        share = kept_share(by_name[row.experiment])
        sns.heatmap(share, vmin=0, vmax=1, annot=share.shape[1] <= 16, fmt=".2f", cmap="viridis", ax=ax,
                    cbar_kws={"label": "share of units kept"})
        ax.set(title=f"{row.model} / {row.dataset} {row.task}: {row.trim_pct:.0f}% removed", xlabel="layer",
               ylabel="site kind")
    _save(fig, path)


def pareto_front(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on both latency and score: sorted by latency, each better than all faster ones."""
    sign = 1.0 if rows.higher_is_better.iloc[0] else -1.0
    rows = rows.dropna(subset=["latency_ms", "score"]).sort_values(["latency_ms", "score"],
                                                                     ascending=[True, sign < 0])
    best, keep = -math.inf, []
    for index, score in zip(rows.index, sign * rows.score):
        if score > best:
            best = score
            keep.append(index)
    return rows.loc[keep]


def plot_pareto_latency(frame: pd.DataFrame, path: Path) -> None:
    groups = list(frame.groupby(GROUP, sort=False))
    fig, axes = _axes(len(groups))
    for ax, ((model, dataset, task), g) in zip(axes, groups):
        for method in METHODS:
            rows = g[g.method == method]
            if len(rows):
                ax.scatter(rows.latency_ms, rows.score, marker=STYLE[method]["marker"],
                           color=STYLE[method]["color"], label=LABELS[method], zorder=3)
        front = pareto_front(g)
        ax.step(front.latency_ms, front.score, where="post", color="black", lw=1, alpha=0.6, label="Pareto front")
        ax.set(title=f"{model} / {dataset} {task}", xlabel="measured encoder latency (ms, batch 1)",
               ylabel=_ylabel(g))
        ax.legend(fontsize=7)
    _save(fig, path)


def mask_iou(a: dict, b: dict) -> float:
    """Intersection over union of two kept-unit sets ({site: [unit indices]}), pooled over all sites."""
    sa = {(site, i) for site, kept in a.items() for i in kept}
    sb = {(site, i) for site, kept in b.items() for i in kept}
    return len(sa & sb) / len(sa | sb) if sa | sb else NAN


def mask_overlap(frame: pd.DataFrame, results: list[dict]) -> dict[str, pd.DataFrame]:
    """Per backbone with kept_indices on >= 2 tasks: task x task IoU of the masks (per task, the run nearest 50 %)."""
    by_name = {r["experiment"]: r for r in results}
    with_indices = frame[[bool(by_name.get(e, {}).get("kept_indices")) for e in frame.experiment]]
    out = {}
    for model, g in closest_to(with_indices).groupby("model", sort=False):
        if len(g) < 2:
            continue
        names = [f"{d}/{t}\n({p:.0f}% removed)" for d, t, p in zip(g.dataset, g.task, g.trim_pct)]
        masks = [by_name[e]["kept_indices"] for e in g.experiment]
        out[model] = pd.DataFrame([[mask_iou(a, b) for b in masks] for a in masks], index=names, columns=names)
    return out


def plot_mask_overlap(frame: pd.DataFrame, results: list[dict], path: Path) -> dict[str, pd.DataFrame]:
    overlaps = mask_overlap(frame, results)
    if not overlaps:
        _message_figure(path, "mask overlap needs kwyn results with kept_indices on at least two tasks of one "
                              "backbone: none here")
        return overlaps
    fig, axes = _axes(len(overlaps), width=5.5, height=4.5)
    for ax, (model, iou) in zip(axes, overlaps.items()):
        sns.heatmap(iou, vmin=0, vmax=1, annot=True, fmt=".2f", cmap="magma", ax=ax,
                    cbar_kws={"label": "IoU of kept units"})
        ax.set(title=f"{model}: overlap of kept units between tasks", xlabel="task", ylabel="task")
    _save(fig, path)
    return overlaps


def plot_convexity(results: list[dict], path: Path) -> None:
    runs = [r for r in results if (r.get("convexity") or {}).get("scores")]
    if not runs:
        return _message_figure(path, "no convexity results: no per-layer convexity scores to plot")
    models = list(dict.fromkeys(r["backbone"] for r in runs))
    fig, axes = _axes(len(models))
    for ax, model in zip(axes, models):
        for i, r in enumerate(r for r in runs if r["backbone"] == model):
            scores = r["convexity"]["scores"]
            line, = ax.plot(range(1, len(scores) + 1), scores, "o-", color=f"C{i}",
                            label=f"{r['dataset']}/{r['task']} (kept {r['convexity'].get('kept_layers')})")
            if r["convexity"].get("kept_layers") is not None:
                ax.axvline(r["convexity"]["kept_layers"], color=line.get_color(), ls=":", alpha=0.7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(title=f"{model}: graph convexity per layer (dotted: layers kept)",
               xlabel="transformer layer (output of layer i)", ylabel="convexity score (share, 0-1)")
        ax.legend(fontsize=7)
    _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------


def first_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """One run's masks per configuration (the mask figures show units, which do not average): each configuration's
    first seed (runs: results_frame)."""
    return (runs.assign(_config=runs.experiment.map(config_name)).sort_values("seed", kind="stable")
            .drop_duplicates(["_config", "round"]).drop(columns="_config").sort_index())


def write_all(results: list[dict], tables_dir: Path, figures_dir: Path, reference_dir: Path | None = None) -> dict:
    """Write every table and figure; reference_dir holds the paper's paper_table{1,2}.csv (found if not given)."""
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    reference_dir = Path(reference_dir) if reference_dir else find_reference_dir()
    runs = results_frame(results)
    detail = results_table(runs)
    frame = seed_means(runs)  # tables and figures: one row per configuration, averaged over its seeds
    t1 = with_paper(table1(frame), reference_dir and reference_dir / "paper_table1.csv")
    t2 = with_paper(table2(frame), reference_dir and reference_dir / "paper_table2.csv")

    _write_table(detail, tables_dir / "results", "All results: one row per model (lottery: per round). score = the "
                 "row's primary metric (column metric; higher_is_better gives its direction); w_acc, macro_acc "
                 "(classification), roc_auc (tagging) and cer (ASR) where they apply; trim_pct = share of encoder "
                 "parameters removed, target_pct = the ratio asked for; delta_vs_base = improvement over the base "
                 "score (signed so positive = better); relative_drop = loss relative to base (positive = worse); "
                 "max_abs_diff = masked vs trimmed outputs.", latex=False)
    _write_table(summary(frame), tables_dir / "summary", "Every configuration: the mean over its seeds of the test "
                 "score (its primary metric, column metric), min-max over the seeds in brackets; vs base = points "
                 "gained over the base model's mean (negative = worse); removed = share of encoder parameters; "
                 "speed-up and GFLOPs of the encoder at batch 1 (lottery: its last round).", latex=False)
    _write_table(t1, tables_dir / "table1", TABLE1_CAPTION)
    _write_table(t2, tables_dir / "table2", table2_caption(frame))

    plot_metric_vs_trimming(frame, figures_dir / "metric_vs_trimming.png")
    first_seed = first_seeds(runs)
    plot_kept_units(first_seed, results, figures_dir / "kept_units_heatmap.png")
    plot_pareto_latency(frame, figures_dir / "pareto_latency.png")
    overlaps = plot_mask_overlap(first_seed, results, figures_dir / "mask_overlap.png")
    plot_convexity(results, figures_dir / "convexity_per_layer.png")
    return {"results": detail, "table1": t1, "table2": t2, "frame": frame, "runs": runs, "mask_overlap": overlaps}


# ----------------------------------------------------------------------------------------------------------------
# readings: what each table and figure says, in sentences generated from the same frames (notebooks/04_report)


def _points(row) -> float:
    """Points gained over the base model's mean score (100 x delta_vs_base: positive = better, WER included)."""
    return 100.0 * row.delta_vs_base


def _name(model: str, dataset: str, task: str) -> str:
    return f"{model} / {dataset} {task}"


def _count(n: int, total: int, noun: str) -> str:
    """'2 of 3 methods', '1 of 1 method'."""
    return f"{n} of {total} {noun}{'s' if total != 1 else ''}"


def _fmt_points(points: float) -> str:
    return f"{points:+.1f} points"


def _table1_reading(t1: pd.DataFrame, frame: pd.DataFrame) -> str:
    ours = t1[t1.source == "kwyn"]
    paper = t1[t1.source == "paper"]
    lines = ["Table I gives the test score of every method per model and task, at 25, 50 and 75 % of the encoder's "
             "parameters removed, next to the frozen encoder with its head (base); scores are means over seeds."]
    for _, row in ours.iterrows():
        cells = [(pct, row.get(f"ours_{pct}", NAN)) for pct in RATIOS_PCT]
        cells = [(pct, v) for pct, v in cells if pd.notna(v)]
        sign = 1.0 if row.higher_is_better else -1.0
        loop = f"kwyn with a recipe ({row.recipe})" if row.recipe else "kwyn (the paper's loop)"
        if not cells and pd.isna(row.get("best_score", NAN)):
            continue
        at = ", ".join(f"{v:.3f} at {pct} % removed ({_fmt_points(100 * sign * (v - row.base))})" for pct, v in cells)
        best = (f"; its best run removed {row.best_trim_pct:.0f} % and scores {row.best_score:.3f}"
                if pd.notna(row.get("best_score", NAN)) else "")
        lines.append(f"- **{_name(row.model, row.dataset, row.task)}**, base {row.base:.3f} ({row.metric}): "
                     f"{loop} scores {at or 'no run at the table ratios'}{best}.")
    if len(paper):
        lines.append(f"\nThe {len(paper)} rows with source = paper are the paper's own numbers (its models and "
                     "datasets, 100k steps): they compare in shape, not in value.")
    return "\n".join(lines)


def _table2_reading(t2: pd.DataFrame) -> str:
    ours = t2[(t2.source == "kwyn") & t2.tasks.notna() & ~t2.note.fillna("").str.startswith("mean over")]
    lines = ["Table II selects, per model, task and method, the fastest trimmed model whose score stays within "
             f"{100 * MAX_RELATIVE_DROP:g} % (relative) of the base model's, and gives its cost."]
    for (model, tasks), g in ours.groupby(["model", "tasks"], sort=False):
        ok = g[g.speedup.notna()]
        total = len(g)
        if ok.empty:
            lines.append(f"- **{model} / {tasks}**: none of the {total} methods has a model within "
                         f"{100 * MAX_RELATIVE_DROP:g} % of base.")
            continue
        best = ok.loc[ok.speedup.idxmax()]
        drop = (f"{best.relative_drop_pct:.1f} % relative drop" if best.relative_drop_pct >= 0 else
                f"{-best.relative_drop_pct:.1f} % better than base")
        verb = "qualifies" if len(ok) == 1 else "qualify"
        lines.append(f"- **{model} / {tasks}**: {_count(len(ok), total, 'method')} {verb}; "
                     f"the fastest is {best.variant.split(' (')[0]} (`{best.experiment}`), {best.trim_pct:.0f} % "
                     f"removed, {best.speedup:.2f}x faster than the full encoder, scoring {best.score:.3f} against "
                     f"base {best.base_score:.3f} ({drop}).")
    return "\n".join(lines)


def _results_reading(runs: pd.DataFrame) -> str:
    groups = runs.groupby(GROUP, sort=False).ngroups
    configs = runs.experiment.map(config_name).nunique()
    seeds = runs.assign(c=runs.experiment.map(config_name)).groupby("c").seed.nunique().max()
    worst = runs.loc[runs.max_abs_diff.idxmax()] if runs.max_abs_diff.notna().any() else None
    check = (f" The trimmed models reproduce their masked models' outputs to within {worst.max_abs_diff:.1g} "
             "(max_abs_diff, largest over all runs)." if worst is not None else "")
    return (f"The results table lists every run: {len(runs)} models (a lottery run gives one per round) of "
            f"{configs} configurations, up to {seeds} seeds each, on {groups} model / task pairs, with every "
            f"metric and cost.{check}")


def _summary_reading(frame: pd.DataFrame) -> str:
    rows = frame[frame["round"].isna() | (frame["round"] == frame.groupby("config")["round"].transform("max"))]
    lines = ["The summary averages each configuration over its seeds (min-max in brackets)."]
    for (model, dataset, task), g in rows.groupby(GROUP, sort=False):
        trimmed = g[g.method.map(lambda m: REGISTRY[m].removes_units if m in REGISTRY else False)]
        if trimmed.empty:
            continue
        sign = 1.0 if g.higher_is_better.iloc[0] else -1.0
        best = trimmed.loc[(sign * trimmed.score).idxmax()]
        spread = (f", seeds {best.score_min:.3f}-{best.score_max:.3f}" if best.seeds > 1 else "")
        lines.append(f"- **{_name(model, dataset, task)}**: the best trimmed configuration, {best.setting}, removes "
                     f"{best.trim_pct:.0f} % and averages {best.score:.3f} over {best.seeds:.0f} seed(s) "
                     f"({_fmt_points(_points(best))} vs base{spread}).")
    return "\n".join(lines)


def _removes_units(frame: pd.DataFrame) -> pd.Series:
    return frame.method.map(lambda m: REGISTRY[m].removes_units if m in REGISTRY else False)


def _metric_vs_trimming_reading(frame: pd.DataFrame) -> str:
    lines = ["The figure plots the test score against the share of encoder parameters removed, one panel per model "
             "and task; methods that remove nothing are horizontal lines, bars give the min-max over seeds."]
    for (model, dataset, task), g in frame.groupby(GROUP, sort=False):
        trimmed = g[_removes_units(g)]
        if trimmed.empty:
            continue
        within = trimmed[trimmed.relative_drop <= MAX_RELATIVE_DROP + 1e-12]
        most = trimmed.loc[trimmed.trim_pct.idxmax()]
        if within.empty:
            head = f"no trimmed model stays within {100 * MAX_RELATIVE_DROP:g} % of base"
        else:
            far = within.loc[within.trim_pct.idxmax()]
            head = (f"the most removed within {100 * MAX_RELATIVE_DROP:g} % of base is {far.trim_pct:.0f} % "
                    f"({far.setting}: {far.score:.3f}, {_fmt_points(_points(far))})")
        lines.append(f"- **{_name(model, dataset, task)}**: {head}; the most removed overall, {most.trim_pct:.0f} % "
                     f"({most.setting}), scores {most.score:.3f} ({_fmt_points(_points(most))}).")
    return "\n".join(lines)


def _pareto_reading(frame: pd.DataFrame) -> str:
    lines = ["The figure plots the test score against the encoder's measured latency (batch 1); the black step "
             "line is the Pareto front, the models that no other model beats on both."]
    for (model, dataset, task), g in frame.groupby(GROUP, sort=False):
        front = pareto_front(g)
        if front.empty:
            continue
        fastest = front.iloc[0]
        full = g.full_latency_ms.dropna()
        base = f" (full encoder: {full.iloc[0]:.1f} ms)" if len(full) else ""
        lines.append(f"- **{_name(model, dataset, task)}**: {_count(len(front), len(g), 'configuration')} on the "
                     f"front; the fastest, {fastest.setting}, runs in {fastest.latency_ms:.1f} ms{base} and scores "
                     f"{fastest.score:.3f} ({_fmt_points(_points(fastest))}).")
    return "\n".join(lines)


def _kept_units_reading(first_seed: pd.DataFrame, results: list[dict]) -> str:
    chosen = closest_to(first_seed) if (first_seed.method == MASK_FIGURE_METHOD).any() else first_seed.iloc[:0]
    if chosen.empty:
        return "No kwyn results: there are no learned masks to show."
    by_name = {r["experiment"]: r for r in results}
    lines = ["The heatmap gives the share of units kept per layer and kind of site (attention heads, FFN units, "
             "conv channels) for the kwyn run closest to 50 % removed on each task."]
    for _, row in chosen.iterrows():
        share = kept_share(by_name[row.experiment])
        parts = []
        for kind, values in share.iterrows():
            values = values.dropna()
            if values.empty:
                continue
            lo, hi = values.idxmin(), values.idxmax()
            parts.append(f"{kind} {values[lo]:.0%} kept in layer {lo} to {values[hi]:.0%} in layer {hi}"
                         if lo != hi else f"{kind} {values[lo]:.0%} kept")
        lines.append(f"- **{_name(row.model, row.dataset, row.task)}** ({row.trim_pct:.0f} % removed): "
                     + "; ".join(parts) + ".")
    return "\n".join(lines)


def _mask_overlap_reading(overlaps: dict[str, pd.DataFrame]) -> str:
    if not overlaps:
        return ("No backbone has kwyn masks (with kept_indices) on two tasks: there is no overlap to show.")
    lines = ["The heatmap gives, per backbone, the intersection over union (IoU) of the units kept for each pair of "
             "tasks: 1 = the same units, 0 = disjoint."]
    for model, iou in overlaps.items():
        names = [n.split("\n")[0] for n in iou.index]
        pairs = [f"{names[i]} vs {names[j]}: {iou.iat[i, j]:.2f}" for i in range(len(names))
                 for j in range(i + 1, len(names))]
        lines.append(f"- **{model}**: " + "; ".join(pairs) + ".")
    return "\n".join(lines)


def _convexity_reading(results: list[dict]) -> str:
    runs = [r for r in results if (r.get("convexity") or {}).get("scores")]
    if not runs:
        return "No convexity results: there are no per-layer convexity scores to show."
    lines = ["The figure gives the graph convexity of each transformer layer's output for the task's classes; "
             "convexity-based pruning keeps the layers up to the dotted line."]
    seen = set()
    for r in runs:
        scores, kept = r["convexity"]["scores"], r["convexity"].get("kept_layers")
        key = (r["backbone"], r["dataset"], r["task"], kept)
        if key in seen:  # seeds of one configuration: one line
            continue
        seen.add(key)
        peak = int(np.argmax(scores))
        lines.append(f"- **{_name(r['backbone'], r['dataset'], r['task'])}**: convexity peaks at layer {peak + 1} "
                     f"({scores[peak]:.2f}); {kept} of {len(scores)} layers kept.")
    return "\n".join(lines)


def table_markdown(path) -> str:
    """A written table's .md (caption + table) ready for a notebook's Markdown display: '<' and '>' escaped, so that
    a caption's placeholder such as <method>-<kind> is not swallowed as an HTML tag."""
    return Path(path).read_text().replace("<", "&lt;").replace(">", "&gt;")


FIGURES = ["metric_vs_trimming", "pareto_latency", "kept_units_heatmap", "mask_overlap", "convexity_per_layer"]


def readings(results: list[dict], reference_dir: Path | None = None) -> dict[str, str]:
    """One short markdown reading per table (table1, table2, results, summary) and figure (FIGURES): what it shows
    and what its numbers say, computed from the frames write_all builds from the same results, so the words follow
    the data whatever params.yaml ran."""
    reference_dir = Path(reference_dir) if reference_dir else find_reference_dir()
    runs = results_frame(results)
    frame = seed_means(runs)
    t1 = with_paper(table1(frame), reference_dir and reference_dir / "paper_table1.csv")
    t2 = with_paper(table2(frame), reference_dir and reference_dir / "paper_table2.csv")
    first_seed = first_seeds(runs)
    return {"table1": _table1_reading(t1, frame), "table2": _table2_reading(t2), "results": _results_reading(runs),
            "summary": _summary_reading(frame), "metric_vs_trimming": _metric_vs_trimming_reading(frame),
            "pareto_latency": _pareto_reading(frame), "kept_units_heatmap": _kept_units_reading(first_seed, results),
            "mask_overlap": _mask_overlap_reading(mask_overlap(first_seed, results)),
            "convexity_per_layer": _convexity_reading(results)}

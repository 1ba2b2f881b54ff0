"""Tables and figures from the evaluation results (metrics/<experiment>.json).

Each row is scored by its own primary metric (result["metric"]: weighted_accuracy for
classification, mAP for tagging, wer for ASR) in the `score` column; w_acc / macro_acc
(classification), roc_auc (tagging) and cer (ASR) are filled where they apply, NaN elsewhere.
`higher_is_better` gives each metric's direction (WER: lower is better), and delta_vs_base is
signed by it: positive = better than the base model, whatever the metric.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from kwyn.io import atomic_path  # noqa: E402


METRIC_LABELS = {"weighted_accuracy": "weighted accuracy", "mAP": "mAP", "wer": "WER (lower is better)"}


def setting(result: dict) -> str:
    if result["method"] == "base":
        return "base"
    return f"{result['method']} {result['sparsity_loss']} t={result['t']:g} λ={result['lambda']:g}"


def results_frame(results: list[dict]) -> pd.DataFrame:
    nan = float("nan")
    rows = [{"experiment": r["experiment"], "model": r["backbone"], "dataset": r["dataset"], "task": r["task"],
             "method": r["method"], "setting": setting(r), "trim_pct": 100 * r["trim_ratio"],
             "metric": r["metric"], "score": r["test"][r["metric"]], "masked_score": r["test_masked"][r["metric"]],
             "w_acc": r["test"].get("weighted_accuracy", nan), "macro_acc": r["test"].get("macro_accuracy", nan),
             "roc_auc": r["test"].get("roc_auc", nan), "cer": r["test"].get("cer", nan),
             "higher_is_better": r.get("higher_is_better", True),  # results written before ASR: both higher
             "masked_w_acc": r["test_masked"].get("weighted_accuracy", nan),
             "max_abs_diff": r["max_abs_diff_masked_vs_trimmed"],
             "params_m": r["params"] / 1e6, "size_mb": r["size_mb"], "gflops": r["gflops"], "gmacs": r["gmacs"],
             "latency_ms": r["latency_ms"], "full_latency_ms": r["full_latency_ms"], "speedup": r["speedup"],
             "flops_ratio": r["flops_ratio"], "input_seconds": r["input_seconds"], "threads": r["threads"]}
            for r in results]
    frame = pd.DataFrame(rows)
    base = frame[frame.method == "base"].set_index(["model", "dataset", "task"])
    for column in ("score", "w_acc"):
        frame[f"base_{column}"] = [base[column].get((m, d, t)) for m, d, t in zip(frame.model, frame.dataset,
                                                                                    frame.task)]
    return frame.sort_values(["model", "dataset", "task", "trim_pct"]).reset_index(drop=True)


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """Test metric per model/task at each trimming setting, next to the base model's."""
    out = frame[["model", "dataset", "task", "setting", "trim_pct", "w_acc", "macro_acc", "base_w_acc", "metric",
                 "score", "base_score", "roc_auc", "cer", "higher_is_better"]].copy()
    # in the row's own metric, signed so that positive = better (= w_acc - base_w_acc for w-acc, base - score for WER)
    sign = out.higher_is_better.map({True: 1.0, False: -1.0})
    out["delta_vs_base"] = sign * (out.score - out.base_score)
    return out


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """Encoder cost of each model: size, FLOPs and measured speed-up over the full encoder."""
    return frame[["model", "task", "setting", "trim_pct", "params_m", "size_mb", "gflops", "gmacs", "latency_ms",
                  "full_latency_ms", "speedup", "flops_ratio", "input_seconds", "threads"]].copy()


def _write_table(table: pd.DataFrame, stem: Path, caption: str) -> None:
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(f"{caption}\n\n{table.to_markdown(index=False, floatfmt='.4g')}\n")


def plot_metric_vs_trimming(frame: pd.DataFrame, path: Path) -> None:
    groups = list(frame.groupby(["model", "dataset", "task"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, ((model, dataset, task), g) in zip(axes[0], groups):
        trimmed = g[g.method != "base"].sort_values("trim_pct")
        ax.plot(trimmed.trim_pct, trimmed.score, "o-", label="kwyn (masks trained, then trimmed)")
        for _, row in trimmed.iterrows():
            ax.annotate(row.setting.removeprefix("kwyn "), (row.trim_pct, row.score), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        for _, row in g[g.method == "base"].iterrows():
            ax.axhline(row.score, color="grey", ls="--", label="base (frozen encoder + head)")
        metrics = " / ".join(METRIC_LABELS.get(m, m) for m in dict.fromkeys(g.metric))
        ax.set(title=f"{model} / {dataset} {task}", xlabel="encoder parameters removed (%)",
               ylabel=f"test {metrics}", xlim=(-2, 100))
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_kept_units(results: list[dict], path: Path) -> None:
    rows = {f"{r['experiment']} ({100 * r['trim_ratio']:.0f}% removed)":
            {site: r["kept_units"][site] / units for site, units in r["site_units"].items()} for r in results}
    kept = pd.DataFrame(rows).T
    fig, ax = plt.subplots(figsize=(1.1 * kept.shape[1] + 4, 0.5 * kept.shape[0] + 1.5))
    sns.heatmap(kept, vmin=0, vmax=1, annot=True, fmt=".2f", cmap="viridis", ax=ax,
                cbar_kws={"label": "share of units kept"})
    ax.set(xlabel="mask site (layer)", ylabel="experiment", title="Units kept per layer")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_all(results: list[dict], tables_dir: Path, figures_dir: Path) -> dict:
    frame = results_frame(results)
    lengths = sorted({f"{s:g} s" for s in frame.input_seconds})
    t1, t2 = table1(frame), table2(frame)
    _write_table(t1, Path(tables_dir) / "table1", "Table 1: test metric per trimming setting; score = the row's "
                 "primary metric (column metric: weighted_accuracy (= accuracy) for classification, mAP for tagging, "
                 "wer for ASR; higher_is_better gives its direction); w_acc, macro_acc (classification), roc_auc "
                 "(tagging) and cer (ASR) where they apply; trim_pct = share of encoder parameters removed; "
                 "delta_vs_base = improvement over the base score (score - base, or base - score where lower is "
                 "better).")
    _write_table(t2, Path(tables_dir) / "table2", f"Table 2: encoder cost at {', '.join(lengths)} of input, batch 1; "
                 "size = params x 4 bytes (MB = 10^6 B); FLOPs by torch.utils.flop_counter (GMACs = GFLOPs / 2); "
                 "speed-up = median latency of the full encoder / trimmed encoder, alternated in one process.")
    plot_metric_vs_trimming(frame, Path(figures_dir) / "metric_vs_trimming.png")
    plot_kept_units(results, Path(figures_dir) / "kept_units_per_layer.png")
    return {"table1": t1, "table2": t2}

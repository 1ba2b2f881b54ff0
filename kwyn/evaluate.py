"""Trim a trained run and evaluate base / masked / trimmed models on the test split.

The result holds the task's metrics for the trimmed ("test") and the masked ("test_masked")
model, the largest |difference| of their outputs (logits, or CTC log-probs for ASR) and, for
ASR, how many test utterances the two decode differently (differing_decodes, expected 0).
"""
from __future__ import annotations

from pathlib import Path

import torch

from kwyn import profile
from kwyn.io import write_json
from kwyn.metrics import task_type
from kwyn.model import max_abs_diff, predict, task_model
from kwyn.params import ResolvedExperiment
from kwyn.train import frozen_backbone, load_trained
from kwyn.trim import load_trimmed, save_trimmed, trim_model


def trim_run(exp: ResolvedExperiment, run_dir: str | Path, out_dir: str | Path) -> dict:
    """Physically remove the units the run's selected masks switched off; save the trimmed model."""
    model, masks, best = load_trained(exp, run_dir)
    backbone = model.backbone
    sites = {s.name: s.units for s in backbone.mask_sites()}
    kept = {k: v.tolist() for k, v in masks.kept_units().items()} if masks is not None \
        else {name: list(range(n)) for name, n in sites.items()}
    base_config = dict(backbone.config)
    # a fresh backbone without hooks: trimming must not inherit the masks' forward hooks
    plain = frozen_backbone(exp)
    trimmed = task_model(trim_model(plain, kept), model.head)
    metadata = {"experiment": exp.name, "backbone": exp.backbone, "dataset": exp.dataset, "task": exp.task,
                "method": exp.method, "selected_step": best["row"]["step"],
                "trim_ratio": 1 - profile.param_count(plain) / profile.param_count(backbone)}
    save_trimmed(trimmed, kept, sites, out_dir, metadata, base_config=base_config)
    return metadata


def evaluate_run(exp: ResolvedExperiment, data_root: str | Path, run_dir: str | Path, model_dir: str | Path,
                 progress: bool = True) -> dict:
    from kwyn.data.prepare import PreparedDataset

    torch.set_num_threads(exp.train.threads)
    test_set = PreparedDataset(data_root, "test", exp.task)
    type_name, ttype = task_type(test_set, exp.name)
    masked, _, best = load_trained(exp, run_dir)
    trimmed = load_trimmed(model_dir)
    batch = exp.profile.eval_batch_size
    # logits (classification, tagging) or per-utterance log-probs (asr)
    masked_out = predict(masked, test_set, batch, progress=progress)
    trimmed_out = predict(trimmed, test_set, batch, progress=progress)

    # cost is the encoder's (the head is the same small MLP for every method)
    full = frozen_backbone(exp)
    example = full.example_input(exp.profile.input_seconds, exp.profile.batch)
    full_cost, trimmed_cost = profile.cost(full, example), profile.cost(trimmed.backbone, example)
    latency = profile.latency_ms({"full": full, "trimmed": trimmed.backbone}, example, exp.profile.repeats,
                                 exp.profile.warmup, exp.profile.threads)
    config = trimmed.config
    result = {
        "experiment": exp.name, "backbone": exp.backbone, "dataset": exp.dataset, "task": exp.task,
        "method": exp.method,
        "sparsity_loss": exp.sparsity.loss if exp.sparsity else None,
        "t": exp.sparsity.t if exp.sparsity else None,
        "lambda": exp.sparsity.lambda_ if exp.sparsity else None,
        "selected_step": best["row"]["step"], "val_metric": best["row"]["val_metric"],
        "task_type": type_name, "metric": ttype.primary,  # the primary metric: a key of "test"
        "higher_is_better": ttype.higher_is_better,
        "test": ttype.score(trimmed_out, test_set),
        "test_masked": ttype.score(masked_out, test_set),
        "max_abs_diff_masked_vs_trimmed": max_abs_diff(masked_out, trimmed_out),
        # asr: differing_decodes, the test utterances whose greedy decodes differ (0 when trimming is exact)
        **ttype.agreement(masked_out, trimmed_out, ttype.context(test_set)),
        "trim_ratio": 1 - trimmed_cost["params"] / full_cost["params"],
        "input_seconds": exp.profile.input_seconds, "profile_batch": exp.profile.batch,
        "threads": exp.profile.threads,
        **trimmed_cost,
        **{f"full_{k}": v for k, v in full_cost.items()},
        "latency_ms": latency["trimmed"], "full_latency_ms": latency["full"],
        "speedup": latency["full"] / latency["trimmed"],
        "flops_ratio": full_cost["gflops"] / trimmed_cost["gflops"],
        "kept_units": {k: len(v) for k, v in config["kept_units"].items()},
        "site_units": config["site_units"],
    }
    return result


def write_result(result: dict, path: str | Path) -> None:
    write_json(path, result)

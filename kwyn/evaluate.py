"""Trim a trained run and evaluate its trained (masked) and trimmed models on the test split.

The result holds the task's metrics for the trimmed ("test") and the masked ("test_masked")
model, the largest |difference| of their outputs (logits, or CTC log-probs for ASR) and, for
ASR, how many test utterances the two decode differently (differing_decodes, expected 0). The
masked model (the full encoder's cost) sees `profile.masked_check_clips` test clips, spread over
the split (masked_check_clips; default: all of them).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from kwyn import profile
from kwyn.backbones import build_backbone
from kwyn.io import atomic_path, write_json
from kwyn.metrics import task_type
from kwyn.model import max_abs_diff, predict, task_model
from kwyn.methods import method_of
from kwyn.params import ResolvedExperiment
from kwyn.runs import build_encoder, frozen_backbone, load_trained, round_dirs
from kwyn.trim import inference_config, load_trimmed, save_trimmed, trim_model


def trim_run(exp: ResolvedExperiment, run_dir: str | Path, out_dir: str | Path,
             data_root: str | Path | None = None) -> dict:
    """Physically remove the units the run switched off (masks) or never had (scratch, convexity's
    dropped layers); save the smaller model. A method that trains in rounds (lottery): the last round at
    out_dir, every round under out_dir/rounds/<round>. data_root: the run's prepared dataset, whose labels,
    sample rate and clip length are saved with the model for its predict() (without it, the model gives
    logits only)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not method_of(exp).in_rounds:
        return _trim_one(exp, run_dir, out_dir, data_root)
    rounds_run = round_dirs(run_dir)
    rounds = [_trim_one(exp, r, out_dir / "rounds" / r.name, data_root) for r in rounds_run]
    # the top-level best.pt is a copy of the last round's (kwyn.runs.copy_selected): so is its model
    for f in (out_dir / "rounds" / rounds_run[-1].name).iterdir():
        if f.is_file():
            with atomic_path(out_dir / f.name) as tmp:
                shutil.copyfile(f, tmp)
    return {**rounds[-1], "rounds": rounds}


def _trim_one(exp: ResolvedExperiment, run_dir: Path, out_dir: Path, data_root: str | Path | None = None) -> dict:
    model, modulations, best = load_trained(exp, run_dir)
    architecture = best["architecture"]
    # a fresh encoder without hooks: trimming must not inherit the modulations' forward hooks
    plain = build_encoder(exp, architecture)
    if best["encoder"] is not None:
        plain.load_state_dict(best["encoder"])
    if architecture.get("kept_units") is not None:  # scratch: built trimmed
        kept, base_config = architecture["kept_units"], architecture["base_config"]
        with torch.device("meta"):
            sites = {s.name: s.units for s in build_backbone(base_config).mask_sites()}
    else:
        sites = {s.name: s.units for s in plain.mask_sites()}
        base_config = dict(plain.config)
        removed = modulations.kept_units() if modulations is not None else None
        if removed is not None:  # masks of any kind
            kept = {k: v.tolist() for k, v in removed.items()}
        else:  # base, ssf, convexity: every unit of the (kept layers of the) encoder
            kept = {name: list(range(n)) for name, n in sites.items()}
        trim_model(plain, kept)
    trimmed = task_model(plain, model.head)
    kept_modulations = modulations is not None and modulations.kept_at_trim
    if kept_modulations:
        trimmed.modulations = modulations  # e.g. SSF's trained scale-and-shift, re-attached at load
    full = frozen_backbone(exp)
    metadata = {"experiment": exp.name, "backbone": exp.backbone, "dataset": exp.dataset, "task": exp.task,
                "method": exp.method, "source": exp.source, "target_ratio": exp.target_ratio,
                "selected_step": best["row"]["step"], "layers": architecture.get("layers"),
                "trim_ratio": 1 - profile.param_count(plain) / profile.param_count(full)}
    inference = inference_config(data_root, exp.task, exp.dataset_params.offset_seconds) if data_root else None
    save_trimmed(trimmed, kept, sites, out_dir, metadata, base_config=base_config,
                 modulations=modulations.kind if kept_modulations else None, inference=inference)
    return metadata


def evaluate_run(exp: ResolvedExperiment, data_root: str | Path, run_dir: str | Path, model_dir: str | Path,
                 progress: bool = True) -> dict:
    """Test metrics and cost of the trimmed model (lottery: of every round, the last at top level)."""
    from kwyn.data.prepare import PreparedDataset

    torch.set_num_threads(exp.train.threads)
    test_set = PreparedDataset(data_root, "test", exp.task)
    method = method_of(exp)
    if method.in_rounds:
        rounds = [{"round": int(r.name.removeprefix("round")),
                   **_evaluate_one(exp, test_set, r, Path(model_dir) / "rounds" / r.name, progress)}
                  for r in round_dirs(Path(run_dir))]
        # the top-level model is the last round's (trim_run): its result, not a second measurement
        result = {k: v for k, v in rounds[-1].items() if k != "round"}
        result["rounds"] = rounds
    else:
        result = _evaluate_one(exp, test_set, Path(run_dir), Path(model_dir), progress)
    return {**result, **method.result(exp, Path(run_dir))}


def _evaluate_one(exp: ResolvedExperiment, test_set, run_dir: Path, model_dir: Path, progress: bool) -> dict:
    type_name, ttype = task_type(test_set, exp.name)
    masked, _, best = load_trained(exp, run_dir)
    trimmed = load_trimmed(model_dir)
    batch = exp.profile.eval_batch_size
    # logits (classification, tagging) or per-utterance log-probs (asr)
    trimmed_out = predict(trimmed, test_set, batch, progress=progress)
    checked = check_clips(len(test_set), exp.profile.masked_check_clips)
    masked_out = predict(masked, test_set, batch, checked, progress=progress)
    trimmed_checked = trimmed_out if len(checked) == len(test_set) else predict(trimmed, test_set, batch, checked)

    # cost is the encoder's (the head is the same small MLP for every method)
    full = frozen_backbone(exp)
    example = full.example_input(exp.profile.input_seconds, exp.profile.batch)
    full_cost, trimmed_cost = profile.cost(full, example), profile.cost(trimmed.backbone, example)
    latency = profile.latency_ms({"full": full, "trimmed": trimmed.backbone}, example, exp.profile.repeats,
                                 exp.profile.warmup, exp.profile.threads)
    config = trimmed.config
    result = {
        "experiment": exp.name, "backbone": exp.backbone, "dataset": exp.dataset, "task": exp.task,
        "method": exp.method, "source": exp.source, "target_ratio": exp.target_ratio,
        "sparsity_loss": exp.sparsity.loss if exp.sparsity else None,
        "t": exp.sparsity.t if exp.sparsity else None,
        "lambda": exp.sparsity.lambda_ if exp.sparsity else None,
        "recipe": exp.recipe.model_dump() if exp.recipe else None,
        # ratio control's ramp, as a share of the mask steps (1: the target is reached where the mask training ends)
        "ratio_ramp": exp.sparsity.ratio_ramp if exp.sparsity and exp.sparsity.ratio is not None else None,
        "seed": exp.train.seed,
        "precision": exp.train.precision,  # of the training (autocast); evaluation is in fp32
        "mask_lr": exp.train.mask_lr if method_of(exp).learns_masks else None,
        "selected_step": best["row"]["step"], "val_metric": best["row"]["val_metric"],
        "task_type": type_name, "metric": ttype.primary,  # the primary metric: a key of "test"
        "higher_is_better": ttype.higher_is_better,
        "test": ttype.score(trimmed_out, test_set),
        # the masked model's metrics on the checked clips (the whole test split unless profile.masked_check_clips)
        "test_masked": ttype.score(masked_out, test_set, checked),
        "masked_check_clips": len(checked), "test_clips": len(test_set),
        "max_abs_diff_masked_vs_trimmed": max_abs_diff(masked_out, trimmed_checked),
        # asr: differing_decodes, the checked utterances whose greedy decodes differ (0 when trimming is exact)
        **ttype.agreement(masked_out, trimmed_checked, ttype.context(test_set)),
        "trim_ratio": 1 - trimmed_cost["params"] / full_cost["params"],
        "input_seconds": exp.profile.input_seconds, "profile_batch": exp.profile.batch,
        "threads": exp.profile.threads,
        **trimmed_cost,
        **{f"full_{k}": v for k, v in full_cost.items()},
        "latency_ms": latency["trimmed"], "full_latency_ms": latency["full"],
        "speedup": latency["full"] / latency["trimmed"],
        "flops_ratio": full_cost["gflops"] / trimmed_cost["gflops"],
        "layers": config["metadata"].get("layers"),
        "kept_units": {k: len(v) for k, v in config["kept_units"].items()},
        "kept_indices": config["kept_units"],
        "site_units": config["site_units"],
        "site_kinds": {s.name: s.kind for s in full.mask_sites()},
    }
    return result


def check_clips(count: int, limit: int | None) -> list[int]:
    """Indices of the test clips that go through the masked model as well: all of them, or `limit` spread evenly
    over the split (its classes and speakers come in runs)."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [0]


def write_result(result: dict, path: str | Path) -> None:
    write_json(path, result)

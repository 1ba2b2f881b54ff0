"""Training of the masks and the head on one task (methods `kwyn` and `base`).

The encoder stays frozen (requires_grad=False, eval mode: dropout off, BatchNorm running
statistics), as in the paper; only the head and, for `kwyn`, the mask logits learn. The
loop knows backbones only through the Backbone interface.

A run directory holds:
  checkpoint.pt   the latest state (resumed from when a run is restarted with the same settings)
  best.pt         head + masks at the best validation metric (from `select_after` on)
  history.csv     one row per validation: losses, metric, trimming ratio, kept units
  summary.json    written last: what was selected and how long it took

The task type (classification, tagging, asr) comes from the prepared dataset; its head, how a
batch is collated, its loss and its primary validation metric (with its direction: WER is
better lower) come from kwyn.metrics.TASK_TYPES, so this loop knows no task either. ASR feeds
the backbone's frame sequence (Backbone.sequence) to a BiLSTM-CTC head (kwyn.model.AsrModel).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from kwyn.backbones import Backbone, load_backbone
from kwyn.heads import build_head
from kwyn.io import atomic_path, write_json
from kwyn.masks import MaskSet, sparsity_loss
from kwyn.metrics import task_type
from kwyn.model import TaskModel, predict, task_model
from kwyn.params import ResolvedExperiment


def fingerprint(exp: ResolvedExperiment) -> str:
    """Hash of everything that shapes training: a checkpoint of other settings is never resumed."""
    relevant = exp.model_dump(mode="json", exclude={"profile", "name"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def trimming_ratio(backbone: Backbone, masks: MaskSet) -> float:
    """Share of encoder parameters the current masks would remove, counted exactly."""
    return 1.0 - backbone.trimmed_param_count(masks.kept_units()) / backbone.param_count()


def frozen_backbone(exp: ResolvedExperiment) -> Backbone:
    backbone = load_backbone(exp.backbone, checkpoint=exp.checkpoint)
    if backbone.sample_rate != exp.dataset_params.sample_rate:
        raise ValueError(f"{exp.backbone} runs at {backbone.sample_rate} Hz but dataset {exp.dataset} is prepared at "
                         f"{exp.dataset_params.sample_rate} Hz: set datasets.{exp.dataset}.sample_rate to "
                         f"{backbone.sample_rate}")
    from kwyn.params import DATASET_KINDS

    if DATASET_KINDS[exp.dataset_params.kind].TASKS.get(exp.task) == "asr" and not backbone.has_sequence():
        raise ValueError(f"{exp.backbone} gives no frame sequence, so it cannot serve the ASR task {exp.task!r}")
    return backbone.requires_grad_(False).eval()


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(exp: ResolvedExperiment, data_root: str | Path, run_dir: str | Path, *, progress: bool = True,
          on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Train head (+ masks for method `kwyn`); resumable; returns the summary."""
    from kwyn.data.prepare import PreparedDataset

    cfg, run_dir = exp.train, Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_set = PreparedDataset(data_root, "train", exp.task)
    valid_set = PreparedDataset(data_root, "valid", exp.task)
    type_name, ttype = task_type(train_set, exp.name)

    backbone = frozen_backbone(exp)
    head = ttype.make_head(backbone.embedding_dim, train_set)
    masks = None
    if exp.method == "kwyn":
        masks = MaskSet(backbone.mask_sites(), cfg.mask_init)
        for mask in masks.values():
            mask.attach(backbone)
    model = task_model(backbone, head)
    groups = [{"params": head.parameters(), "lr": cfg.lr}]
    if masks is not None:
        # mask logits need a larger step than the head: at lr 1e-3 a logit starting at 1.0 takes
        # about 1,000 Adam steps to cross the rounding threshold (DESIGN-NOTES section 1)
        groups.append({"params": masks.parameters(), "lr": cfg.mask_lr})
    optimizer = torch.optim.Adam(groups)
    sampler = torch.Generator().manual_seed(cfg.seed)
    val_indices = torch.randperm(len(valid_set), generator=torch.Generator().manual_seed(cfg.seed + 1))
    val_indices = val_indices[:cfg.val_examples].tolist()

    state = {"step": 0, "best": None, "history": [], "seconds": 0.0}
    checkpoint_path, print_ = run_dir / "checkpoint.pt", (tqdm.write if progress else (lambda *_: None))
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if saved["fingerprint"] == fingerprint(exp):
            head.load_state_dict(saved["head"])
            if masks is not None:
                masks.load_state_dict(saved["masks"])
            optimizer.load_state_dict(saved["optimizer"])
            sampler.set_state(saved["sampler"])
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
            print_(f"resuming {exp.name} from step {state['step']} ({checkpoint_path})")
        else:
            print_(f"{checkpoint_path} was made with other settings: starting {exp.name} from step 0")

    select_from = math.floor(cfg.select_after * cfg.steps)
    started = time.perf_counter() - state["seconds"]
    bar = tqdm(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps, desc=exp.name,
               disable=not progress)
    for step in bar:
        batch = torch.randint(len(train_set), (cfg.batch_size,), generator=sampler).tolist()
        audio, lengths, targets = ttype.collate(train_set, batch)
        with torch.set_grad_enabled(masks is not None):  # the frozen encoder; masks learn through it
            features = model.features(audio, lengths)
        task_loss = ttype.loss(model.apply_head(features), targets)
        loss, s_loss = task_loss, torch.zeros(())
        if masks is not None:
            s_loss = sparsity_loss(exp.sparsity.loss, masks.logits(), exp.sparsity.t)
            loss = task_loss + exp.sparsity.lambda_ * s_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] = done = step + 1

        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics = ttype.score(predict(model, valid_set, 32, val_indices), valid_set, val_indices)
            row = {"step": done, "loss": loss.item(), "task_loss": task_loss.item(),
                   "sparsity_loss": s_loss.item(), "val_metric": metrics[ttype.primary],
                   "trim_ratio": trimming_ratio(backbone, masks) if masks is not None else 0.0,
                   "kept_units": masks.kept_count if masks is not None else None}
            state["history"].append(row)
            bar.set_postfix(val=f"{row['val_metric']:.3f}", trim=f"{row['trim_ratio']:.2f}")
            if done >= select_from and ttype.better(row["val_metric"], (state["best"] or {}).get("val_metric")):
                state["best"] = row
                _save({"head": head.state_dict(), "head_config": head.config,
                       "masks": masks.state_dict() if masks is not None else None,
                       "kept_units": {k: v.tolist() for k, v in masks.kept_units().items()} if masks else None,
                       "row": row}, run_dir / "best.pt")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            state["seconds"] = time.perf_counter() - started
            _save({"fingerprint": fingerprint(exp), "head": head.state_dict(),
                   "masks": masks.state_dict() if masks is not None else None,
                   "optimizer": optimizer.state_dict(), "sampler": sampler.get_state(),
                   "torch_rng": torch.get_rng_state(), "state": state}, checkpoint_path)
        if on_step is not None:
            on_step(done)

    _write_history(state["history"], run_dir / "history.csv")
    summary = {"experiment": exp.name, "method": exp.method, "task_type": type_name, "metric": ttype.primary,
               "steps": cfg.steps,
               "train_seconds": round(time.perf_counter() - started, 1), "selected": state["best"],
               "fingerprint": fingerprint(exp)}
    write_json(run_dir / "summary.json", summary)
    return summary


def _write_history(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "task_loss", "sparsity_loss", "val_metric",
                                               "trim_ratio", "kept_units"])
        writer.writeheader()
        writer.writerows(rows)


def load_trained(exp: ResolvedExperiment, run_dir: str | Path) -> tuple[TaskModel, Optional[MaskSet], dict]:
    """The selected (best) masked model of a run: frozen backbone, masks attached, trained head."""
    best_path = Path(run_dir) / "best.pt"
    if not best_path.exists():
        raise FileNotFoundError(f"{best_path} is missing: run the train stage of {exp.name} first")
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    backbone = frozen_backbone(exp)
    head = build_head(best["head_config"])
    head.load_state_dict(best["head"])
    masks = None
    if best["masks"] is not None:
        masks = MaskSet(backbone.mask_sites())
        masks.load_state_dict(best["masks"])
        for mask in masks.values():
            mask.attach(backbone)
    return task_model(backbone, head).eval(), masks, best

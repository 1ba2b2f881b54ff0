"""The resumable training loop every method runs: step, validate, select, checkpoint, resume.

`fit` trains a Learner (the task model and the site modulations hooked into its encoder) for a
number of steps and writes the run directory (kwyn.runs): checkpoint.pt at every
`checkpoint_every` steps (a killed run resumes from it bit for bit), history.csv at every
validation, best.pt at the best validation metric from `select_after` on, summary.json at the end.

The task type (classification, tagging, asr) comes from the prepared dataset: its head, batch
collation, loss and primary metric come from kwyn.metrics.TASK_TYPES, so the loop knows no task;
what learns comes from the modulation set (`param_groups`, `penalty`, `kept_units`), so it knows
no method but the paper's masks, whose ratio control and convergence recipe (kwyn.recipe) it
schedules. Runs scale out with torchrun (DDP, one shard of every batch per rank; kwyn.distributed)
and autocast (train.precision).

    learner = Learner(task_model(encoder, head), MaskSet(encoder.mask_sites()), train_encoder=False)
    summary = fit(exp, learner, train_set, valid_set, Path("runs/x"), architecture={"init": "pretrained"},
                  steps=exp.train.steps, runtime=distributed.setup("cpu", "fp32"))
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
from torch import nn

from kwyn import distributed
from kwyn.backbones import Backbone
from kwyn.io import atomic_path, tqdm, write_json
from kwyn.masks import MaskSet, RatioControl, sparsity_loss
from kwyn.metrics import task_type
from kwyn.model import TaskModel, predict
from kwyn.params import ResolvedExperiment
from kwyn.recipe import (EmbeddingCache, Schedule, Standardized, distillation_loss, gradient_importance,
                          importance_logits, unit_costs)
from kwyn.runs import build_encoder
from kwyn.sites import SiteModulationSet


def fingerprint(exp: ResolvedExperiment, extra: dict | None = None) -> str:
    """Hash of everything that shapes training: a checkpoint of other settings is never resumed."""
    relevant = exp.model_dump(mode="json", exclude={"profile", "name"})
    relevant["train"].pop("device", None)  # where a run computes does not change what it computes
    return hashlib.sha256(json.dumps([relevant, extra], sort_keys=True).encode()).hexdigest()[:16]


def trimming_ratio(backbone: Backbone, kept_units: dict) -> float:
    """Share of encoder parameters that keeping `kept_units` would remove, counted exactly."""
    return 1.0 - backbone.trimmed_param_count(kept_units) / backbone.param_count()


# -- what learns -------------------------------------------------------------------------------------

class Learner(nn.Module):
    """The task model and the site modulations hooked into its encoder: what a run optimises.

    One module, so that DistributedDataParallel sees every trainable parameter (head, masks or
    scale-shifts, and the encoder when it learns).
    """

    def __init__(self, model: TaskModel, modulations: Optional[SiteModulationSet], train_encoder: bool):
        super().__init__()
        self.model, self.modulations, self.train_encoder = model, modulations, train_encoder
        if modulations is not None:
            modulations.attach(model.backbone)
        model.backbone.requires_grad_(train_encoder)

    def forward(self, audio, lengths=None, *, features=None, return_features: bool = False,
                return_frames: bool = False):
        """The task model's outputs. features: given embeddings instead of the encoder's (head warm-up,
        re-fit); return_features: also the encoder's output (distillation); return_frames: also the encoder's
        frame sequence, whose time average the head reads (distillation frame by frame). Inside forward, so
        that DDP sees every phase."""
        frames = None
        if features is None and return_frames:
            # the frames of the whole (padded) clip: their time average is what `features` gives (Backbone.sequence)
            frames = self.model.backbone.sequence(audio)[0]
            features = frames.mean(dim=1)
        elif features is None:
            features = self.model.features(audio, lengths)
        outputs = self.model.apply_head(features)
        if return_frames:
            return outputs, frames
        return (outputs, features) if return_features else outputs

    def train(self, mode: bool = True):
        super().train(mode)
        # a frozen encoder keeps eval mode (dropout off, BatchNorm running statistics), as in the paper
        self.model.backbone.train(mode and self.train_encoder)
        return self

    def param_groups(self, cfg) -> list[dict]:
        groups = [{"params": list(self.model.head.parameters()), "lr": cfg.lr, "name": "head"}]
        if self.modulations is not None:
            groups += self.modulations.param_groups(cfg)
        if self.train_encoder:
            groups.append({"params": list(self.model.backbone.parameters()), "lr": cfg.encoder_lr,
                           "name": "encoder"})
        return groups


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _state(module: Optional[nn.Module]):
    return {k: v.detach().cpu() for k, v in module.state_dict().items()} if module is not None else None


# -- the loop ------------------------------------------------------------------------------------------

def fit(exp: ResolvedExperiment, learner: Learner, train_set, valid_set, run_dir: Path, *, architecture: dict,
        steps: int, runtime, progress: bool = True, extra: dict | None = None,
        on_step: Optional[Callable[[int], None]] = None, live_dir: Optional[Path] = None) -> dict:
    """Train `learner` for `steps` steps; resumable; writes best.pt, history.csv, summary.json in run_dir.

    extra: what else shapes this run (a round's kept units), hashed into the checkpoint's fingerprint;
    on_step(done) is called after every step (lottery saves its rewinding point there);
    live_dir: where the history and the last validation are also written at every validation (dvc plots, exp show).
    """
    cfg = exp.train
    run_dir.mkdir(parents=True, exist_ok=True)
    type_name, ttype = task_type(train_set, exp.name)
    model, modulations = learner.model, learner.modulations
    masks = modulations if isinstance(modulations, MaskSet) else None  # the paper's masks: ratio control, recipe
    recipe = exp.recipe if masks is not None else None
    schedule = Schedule.of(steps, recipe)
    mask_steps, steps = steps, schedule.steps  # a recipe's warm-up and re-fit come on top of the mask training
    learner.to(runtime.device)
    # a recipe's head warm-up and re-fit steps give the masks no gradient, which DDP must be told
    wrapped = distributed.wrap(learner, runtime, **({"find_unused_parameters": True} if recipe else {}))
    optimizer = torch.optim.Adam(learner.param_groups(cfg))
    control = None
    if masks is not None and exp.sparsity.ratio is not None:
        control = RatioControl(model.backbone, masks, exp.sparsity.ratio, schedule.mask_steps,
                               exp.sparsity.ratio_ramp, seed=cfg.seed, start=schedule.mask_start,
                               multiple_of=exp.sparsity.multiple_of)
    warmup_steps = math.ceil(cfg.warmup * steps) if learner.train_encoder else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [(lambda s: min(1.0, (s + 1) / warmup_steps)) if g["name"] == "encoder" and warmup_steps
                    else (lambda s: 1.0) for g in optimizer.param_groups])
    scaler = distributed.grad_scaler(runtime)
    sampler = torch.Generator().manual_seed(cfg.seed)  # same on every rank: each takes its shard of one batch
    teacher = None
    if recipe and (recipe.head_warmup or recipe.distill):
        # the clips the warm-up (and distillation) steps will draw: the sampler's first draws, replayed
        ahead = torch.Generator().manual_seed(cfg.seed)
        upto = schedule.refit_start if recipe.distill else schedule.mask_start
        clips = {i for _ in range(upto) for i in _draw(ahead, len(train_set), cfg.batch_size)}
        teacher = EmbeddingCache(model, masks, train_set, clips, progress=progress and runtime.is_main,
                                 frames=recipe.distill_frames)
    refit_model = None  # the re-fit's encoder: a physically trimmed copy, built when the re-fit starts
    ramp_twin = None  # the ramp re-fit's (kept units, trimmed copy, cache of the training split), for the re-fit
    refit_cache = None  # with recipe.refit_cache, its embeddings of the training split and the validation clips
    standardized = None  # with recipe.refit_standardize, the re-fit's coordinates (kwyn.recipe.Standardized)
    val_indices = validation_indices(cfg, len(valid_set))
    key = fingerprint(exp, extra)

    state = {"step": 0, "best": None, "history": [], "seconds": 0.0}
    checkpoint_path = run_dir / "checkpoint.pt"
    print_ = tqdm.write if progress and runtime.is_main else (lambda *_: None)
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if saved["fingerprint"] == key:
            missing = learner.load_state_dict(saved["learner"], strict=False).missing_keys
            if any(not k.startswith("model.backbone.") for k in missing) or (learner.train_encoder and missing):
                raise RuntimeError(f"{checkpoint_path} lacks {missing[:5]}: delete it to start over")
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            sampler.set_state(saved["sampler"])
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
            print_(f"resuming {exp.name} from step {state['step']} ({checkpoint_path})")
        else:
            print_(f"{checkpoint_path} was made with other settings: starting {exp.name} from step 0")

    def snapshot() -> dict:
        kept = modulations.kept_units() if modulations is not None else None
        # a standardised re-fit's head is saved folded back: the head of the paper, reading the raw embedding
        head = standardized.raw_state(model.head) if standardized is not None else _state(model.head)
        return {"head": head, "head_config": model.head.config,
                "modulation_kind": modulations.kind if modulations is not None else None,
                "modulations": _state(modulations), "architecture": architecture,
                "encoder": _state(model.backbone) if learner.train_encoder else None,
                "kept_units": {k: v.tolist() for k, v in kept.items()} if kept is not None else None}

    # selection from select_after of the mask training on (the ramp's end, by default), never in the warm-up
    select_from = schedule.mask_start + math.floor(cfg.select_after * mask_steps)
    started = time.perf_counter() - state["seconds"]
    bar = tqdm(range(state["step"], steps), initial=state["step"], total=steps, desc=exp.name,
               disable=not (progress and runtime.is_main))
    learner.train()
    for step in bar:
        phase = schedule.phase(step)
        if step == schedule.mask_start and recipe is not None and recipe.init == "importance":
            _importance_init(exp, learner, masks, train_set, ttype, runtime, control.count)  # needs sparsity.ratio
        if control is not None and phase == "masks":
            control.update(step)
        if phase == "refit" and refit_model is None:
            if control is not None:  # the masks freeze at the target, wherever the last update left them
                control.update(schedule.refit_start, force=True)
            train_cache = None
            if ramp_twin is not None and _same_units(ramp_twin[0], masks.kept_units()):
                # the ramp ended at the last mask step: the same units, so the same copy and embeddings
                _, refit_model, train_cache = ramp_twin
            else:
                refit_model = _trimmed_twin(exp, model, masks, architecture, runtime)
            ramp_twin = None
            if recipe.refit_cache:
                show = progress and runtime.is_main
                if train_cache is None:
                    train_cache = EmbeddingCache(refit_model, None, train_set, progress=show)
                refit_cache = {"train": train_cache,
                               "valid": EmbeddingCache(refit_model, None, valid_set, val_indices, progress=show)}
                if recipe.refit_standardize:
                    standardized = Standardized.of(train_cache.all())
                    if not state.get("standardized"):  # a run resumed in its re-fit has a standardised head
                        standardized.enter(model.head)
                        _forget_moments(optimizer, model.head)
                        state["standardized"] = True
        batch_size = (recipe.refit_batch_size or cfg.batch_size) if phase == "refit" else cfg.batch_size
        batch = _draw(sampler, len(train_set), batch_size)
        shard = distributed.shard(batch, runtime)
        audio, lengths, targets = ttype.collate(train_set, shard)
        audio, targets = audio.to(runtime.device), to_device(targets, runtime.device)
        d_loss = None
        with distributed.autocast(runtime):
            if phase == "head":
                outputs = wrapped(audio, lengths, features=teacher.pooled(shard))
            elif phase == "refit":
                if refit_cache is not None:
                    features = refit_cache["train"](shard)
                    if standardized is not None:
                        features = standardized.features(features)
                else:
                    with torch.no_grad():
                        features = refit_model.features(audio, lengths)
                outputs = wrapped(audio, lengths, features=features)
            elif recipe is not None and recipe.distill:
                outputs, student = wrapped(audio, lengths, **{"return_frames" if recipe.distill_frames
                                                               else "return_features": True})
                d_loss = distillation_loss(student, teacher(shard))
            else:
                outputs = wrapped(audio, lengths)
            task_loss = ttype.loss(outputs, targets)
            loss, s_loss = task_loss, torch.zeros(())
            if masks is not None and exp.sparsity.lambda_ > 0 and phase == "masks":
                s_loss = sparsity_loss(exp.sparsity.loss, masks.logits(), exp.sparsity.t)
                loss = task_loss + exp.sparsity.lambda_ * s_loss
            if d_loss is not None:
                loss = loss + recipe.distill * d_loss
            penalty = modulations.penalty(step - schedule.mask_start) if modulations is not None else None
            if penalty is not None:  # a set's own constraint (HardConcrete's Lagrangian on the expected size)
                s_loss = penalty
                loss = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        state["step"] = done = step + 1
        if (recipe is not None and recipe.ramp_refit and phase == "masks" and not state.get("ramp_refit_done")
                and control.target_at(done) >= control.target):
            control.update(done, force=True)  # the masks at the target, as the validation at `done` will see them
            twin = _ramp_refit(exp, model, masks, wrapped, optimizer, scaler, train_set, ttype, architecture, runtime,
                               progress=progress and runtime.is_main)
            # held for the re-fit only where the ramp ends at the last mask step: the masks move no more before it
            ramp_twin = twin if recipe.refit and done == schedule.refit_start else None
            state["ramp_refit_done"] = True  # in the checkpoint: a resumed run does not re-fit twice

        # no validation in a head warm-up: selection never looks there, and the masks have not moved
        if (done % cfg.eval_every == 0 or done == steps) and phase != "head":
            if control is not None and phase == "masks":
                control.update(done, force=True)
            learner.eval()
            with distributed.autocast(runtime), torch.no_grad():
                if refit_cache is not None:
                    features = refit_cache["valid"](val_indices)
                    if standardized is not None:
                        features = standardized.features(features)
                    outputs = refit_model.apply_head(features).float().cpu()
                else:
                    outputs = predict(refit_model or model, valid_set, 32, val_indices)
            metrics = ttype.score(outputs, valid_set, val_indices)
            learner.train()
            kept = modulations.kept_units() if modulations is not None else None
            row = {"step": done, "loss": loss.item(), "task_loss": task_loss.item(),
                   "sparsity_loss": s_loss.item(), "val_metric": metrics[ttype.primary],
                   "trim_ratio": trimming_ratio(model.backbone, kept) if kept is not None else 0.0,
                   "kept_units": sum(len(v) for v in kept.values()) if kept is not None else None}
            if recipe is not None:  # the paper-faithful history keeps its columns
                row.update(phase=phase, distill_loss=d_loss.item() if d_loss is not None else None)
            state["history"].append(row)
            if kept is not None:  # which units each site keeps, per validation: the notebook's kept-share figure
                sites = {name: m.site for name, m in modulations.by_site().items()}
                state.setdefault("kept", []).extend({"step": done, "site": name, "kind": sites[name].kind,
                                                     "units": sites[name].units, "kept": len(units)}
                                                    for name, units in kept.items())
            bar.set_postfix(val=f"{row['val_metric']:.3f}", trim=f"{row['trim_ratio']:.2f}")
            eligible = modulations is None or modulations.eligible(row["trim_ratio"])
            last = done == steps and state["best"] is None  # a run always ends with a model, eligible or not
            if (done >= select_from and eligible and ttype.better(row["val_metric"], (state["best"] or {}).get(
                    "val_metric"))) or last:
                state["best"] = row
                if runtime.is_main:
                    _save({**snapshot(), "row": row}, run_dir / "best.pt")
            if runtime.is_main:  # every validation: a run can be followed while it trains (dvc plots, a notebook)
                _write_history(state["history"], run_dir / "history.csv")
                if state.get("kept"):
                    _write_history(state["kept"], run_dir / "kept_units.csv")
                if live_dir is not None:
                    write_live(state["history"], live_dir)
        if (done % cfg.checkpoint_every == 0 or done == steps) and runtime.is_main:
            state["seconds"] = time.perf_counter() - started
            _save({"fingerprint": key, "learner": _trainable_state(learner), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "sampler": sampler.get_state(),
                   "torch_rng": torch.get_rng_state(), "state": state}, checkpoint_path)
        if on_step is not None:
            on_step(done)
    learner.eval()
    if standardized is not None:  # the learner's head as saved: reading the raw embedding
        model.head.load_state_dict(standardized.raw_state(model.head))

    summary = {"experiment": exp.name, "method": exp.method, "task_type": type_name, "metric": ttype.primary,
               "steps": steps, "train_seconds": round(time.perf_counter() - started, 1), "selected": state["best"],
               "target_ratio": exp.target_ratio, "world_size": runtime.world_size, "device": str(runtime.device),
               "fingerprint": key}
    if runtime.is_main:
        _write_history(state["history"], run_dir / "history.csv")
        if live_dir is not None and state["history"]:  # also when a finished run is resumed: no step, no validation
            write_live(state["history"], live_dir)
        write_json(run_dir / "summary.json", summary)
    distributed.barrier(runtime)
    return summary


def validation_indices(cfg, n: int) -> list[int]:
    """The validation clips every validation of a run scores: train.val_examples of the n, drawn once by seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[:cfg.val_examples].tolist()


def _draw(sampler: torch.Generator, n: int, batch_size: int) -> list[int]:
    """The clip indices of one training batch (drawn with replacement)."""
    return torch.randint(n, (batch_size,), generator=sampler).tolist()


def _trimmed_twin(exp, model: TaskModel, masks: MaskSet, architecture: dict, runtime) -> TaskModel:
    """The model with the units the (frozen) masks drop physically removed, sharing `model`'s head: what a
    re-fit and its validations run, at the trimmed model's cost (tests/trimming.py: same outputs)."""
    kept = {name: units.tolist() for name, units in masks.kept_units().items()}
    encoder = build_encoder(exp, {**architecture, "kept_units": kept}).to(runtime.device)
    return type(model)(encoder, model.head)  # the head keeps the mode the loop gives it; the encoder is in eval


def _same_units(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ramp_refit(exp, model: TaskModel, masks: MaskSet, wrapped, optimizer, scaler, train_set, ttype,
                architecture: dict, runtime, progress: bool) -> tuple[dict, TaskModel, EmbeddingCache]:
    """The recipe's `ramp_refit`: where the ratio ramp reaches its target, the head alone takes that many steps on
    the trimmed encoder's embeddings of the training split (cached, one forward per clip), so that the masks train
    on under a head fitted to what they keep. Batches of its own, so that the training batches stay as they were.
    Returns the kept units, the trimmed copy and its cache: a re-fit on the same units reuses them."""
    recipe, cfg = exp.recipe, exp.train
    kept = masks.kept_units()
    twin = _trimmed_twin(exp, model, masks, architecture, runtime)
    cache = EmbeddingCache(twin, None, train_set, progress=progress)
    standardized = Standardized.of(cache.all()) if recipe.refit_standardize else None
    if standardized is not None:
        standardized.enter(model.head)
        _forget_moments(optimizer, model.head)
    drawn = torch.Generator().manual_seed(cfg.seed + 5)
    for _ in tqdm(range(recipe.ramp_refit), desc="ramp re-fit", leave=False, disable=not progress):
        shard = distributed.shard(_draw(drawn, len(train_set), recipe.refit_batch_size or cfg.batch_size), runtime)
        targets = to_device(ttype.collate(train_set, shard)[2], runtime.device)
        with distributed.autocast(runtime):
            features = cache(shard) if standardized is None else standardized.features(cache(shard))
            loss = ttype.loss(wrapped(None, None, features=features), targets)
        optimizer.zero_grad(set_to_none=True)  # the masks get no gradient: Adam leaves them as they are
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if standardized is not None:  # the masks train on under the head, which reads the raw embedding again
        model.head.load_state_dict(standardized.raw_state(model.head))
        _forget_moments(optimizer, model.head)
    return kept, twin, cache


def _forget_moments(optimizer, module: nn.Module) -> None:
    """Drop Adam's moments of `module`'s parameters, estimated in coordinates that a standardisation changed."""
    for parameter in module.parameters():
        optimizer.state.pop(parameter, None)


def _importance_init(exp, learner: Learner, masks: MaskSet, train_set, ttype, runtime, count) -> None:
    """The recipe's `init: importance`: mask logits from each unit's gradient importance per parameter
    (kwyn.recipe.importance_logits), on batches of their own so that the training batches stay as they were."""
    drawn = torch.Generator().manual_seed(exp.train.seed + 3)
    batches = []
    for _ in range(exp.recipe.init_batches):
        audio, lengths, targets = ttype.collate(train_set, distributed.shard(_draw(drawn, len(train_set),
                                                                                 exp.train.batch_size), runtime))
        batches.append((audio.to(runtime.device), lengths, to_device(targets, runtime.device)))
    importance = gradient_importance(learner, masks, batches, ttype.loss)
    if runtime.distributed:  # each rank saw its shard of every batch: every rank must start from the same logits
        importance = importance.to(runtime.device)
        torch.distributed.all_reduce(importance)
        importance = importance.cpu()
    logits = importance_logits(importance, unit_costs(count, masks),
                               exp.train.mask_init)
    with torch.no_grad():
        for mask, part in zip(masks.values(), logits.split([m.logits.numel() for m in masks.values()])):
            mask.logits.copy_(part.to(mask.logits.device))


def _trainable_state(learner: Learner) -> dict:
    """The learner's state without a frozen encoder's weights, which the run does not change."""
    return {k: v for k, v in _state(learner).items() if learner.train_encoder or not k.startswith("model.backbone.")}


def to_device(targets, device):
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    if isinstance(targets, (tuple, list)):
        return type(targets)(to_device(t, device) for t in targets)
    return targets


def write_live(rows: list[dict], live_dir: Path) -> None:
    """What `dvc exp show` and `dvc plots show` read while a run trains: live_dir/history.csv (every validation so
    far, as runs/<exp>/history.csv) and live_dir/metrics.json (the last one). Outside the run directory, which
    is a stage output of its own (dvc.yaml: the train stages' metrics and plots). DVCLive is not used: its Live()
    opens the DVC repository and its git history at every start, and fails in a repository with no commit.

        write_live([{"step": 30, "val_metric": 0.8, "trim_ratio": 0.5}], Path("live/x"))
        # live/x/metrics.json: {"step": 30, "val_metric": 0.8, "trim_ratio": 0.5}
    """
    live_dir.mkdir(parents=True, exist_ok=True)
    _write_history(rows, live_dir / "history.csv")
    last = {k: v for k, v in rows[-1].items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
    write_json(live_dir / "metrics.json", last)


def _write_history(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)) or [
            "step", "loss", "task_loss", "sparsity_loss", "val_metric", "trim_ratio", "kept_units"])
        writer.writeheader()
        writer.writerows(rows)



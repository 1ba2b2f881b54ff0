"""Training of every method on one task: what learns, and the resumable loop that trains it.

Methods (params.yaml `method`, and the `scratch:` section):
  base       frozen encoder + head (a linear-probe-like baseline)
  ssf        frozen encoder, a scale and a shift per unit at every mask site + head (kwyn.ssf)
  kwyn       frozen encoder, a learned binary mask per unit + head, with the sparsity loss, or
             ratio control landing on a requested trimming ratio (kwyn.masks)
  scratch    the architecture a kwyn run kept, re-initialised and trained whole (encoder unfrozen)
  lottery    rounds of fine-tuning, unit scoring and removal of a share, rewinding (kwyn.lottery)
  convexity  the layers after the most class-convex one dropped, then head (+ encoder) training
             (kwyn.convexity)

A run directory holds:
  checkpoint.pt   the latest state (resumed from when a run is restarted with the same settings)
  best.pt         what is needed to rebuild the model at the best validation metric (from
                  `select_after` on): head, site modulations, encoder weights when they learn,
                  and the architecture (kept units, kept layers)
  history.csv     one row per validation: losses, metric, trimming ratio, kept units
  summary.json    written last: what was selected and how long it took
Lottery runs hold one such directory per round (round0 = dense fine-tuning) and a top-level
best.pt/summary.json of the last round.

The task type (classification, tagging, asr) comes from the prepared dataset: its head, its batch
collation, loss and primary metric come from kwyn.metrics.TASK_TYPES, so this loop knows no task,
and backbones only through the Backbone interface. Runs scale out with torchrun (DDP, one shard
of every batch per rank; kwyn.distributed) and autocast (train.precision).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from kwyn import distributed
from kwyn.backbones import Backbone, build_backbone, load_backbone
from kwyn.heads import build_head
from kwyn.io import atomic_path, read_json, write_json
from kwyn.masks import MaskSet, RatioControl, sparsity_loss
from kwyn.metrics import task_type
from kwyn.model import TaskModel, predict, task_model
from kwyn.params import ResolvedExperiment
from kwyn.recipe import Schedule, TeacherCache, distillation_loss, gradient_importance, importance_logits, unit_costs
from kwyn.ssf import ScaleShiftSet
from kwyn.trim import trim_model


def fingerprint(exp: ResolvedExperiment, extra: dict | None = None) -> str:
    """Hash of everything that shapes training: a checkpoint of other settings is never resumed."""
    relevant = exp.model_dump(mode="json", exclude={"profile", "name"})
    relevant["train"].pop("device", None)  # where a run computes does not change what it computes
    return hashlib.sha256(json.dumps([relevant, extra], sort_keys=True).encode()).hexdigest()[:16]


def trimming_ratio(backbone: Backbone, masks) -> float:
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


# -- architecture: which encoder a run trains, recorded in best.pt so that it can be rebuilt -----------

def build_encoder(exp: ResolvedExperiment, architecture: dict) -> Backbone:
    """The encoder a run starts from, without any modulation attached.

    architecture = {"init": "pretrained" | "random", "base_config": config to build a random
    encoder from, "kept_units": units physically kept (scratch), "layers": transformer layers
    kept (convexity)}.
    """
    if architecture.get("init") == "random":
        torch.manual_seed(exp.train.seed)
        backbone = build_backbone(architecture["base_config"])
    else:
        backbone = frozen_backbone(exp)
    if architecture.get("layers") is not None:
        backbone.keep_layers(architecture["layers"])
    if architecture.get("kept_units") is not None:
        trim_model(backbone, architecture["kept_units"])
    return backbone.requires_grad_(False).eval()


def scratch_architecture(source_model_dir: str | Path) -> dict:
    """Kept units and untrimmed config of the kwyn model a scratch run re-initialises."""
    path = Path(source_model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: trim the scratch run's source experiment first")
    config = read_json(path)
    return {"init": "random", "base_config": config["backbone"], "kept_units": config["kept_units"]}


# -- what learns ---------------------------------------------------------------------------------------

class Learner(nn.Module):
    """The task model and the site modulations hooked into its encoder: what a run optimises.

    One module, so that DistributedDataParallel sees every trainable parameter (head, masks or
    scale-shifts, and the encoder when it learns).
    """

    def __init__(self, model: TaskModel, modulations: Optional[nn.Module], train_encoder: bool):
        super().__init__()
        self.model, self.modulations, self.train_encoder = model, modulations, train_encoder
        if modulations is not None:
            for modulation in modulations.values():
                modulation.attach(model.backbone)
        model.backbone.requires_grad_(train_encoder)

    def forward(self, audio, lengths=None, *, features=None, return_features: bool = False):
        """The task model's outputs. features: given embeddings instead of the encoder's (head warm-up,
        re-fit); return_features: also the encoder's output (distillation). Inside forward, so that DDP
        sees every phase."""
        if features is None:
            features = self.model.features(audio, lengths)
        outputs = self.model.apply_head(features)
        return (outputs, features) if return_features else outputs

    def train(self, mode: bool = True):
        super().train(mode)
        # a frozen encoder keeps eval mode (dropout off, BatchNorm running statistics), as in the paper
        self.model.backbone.train(mode and self.train_encoder)
        return self

    def param_groups(self, cfg) -> list[dict]:
        groups = [{"params": list(self.model.head.parameters()), "lr": cfg.lr, "name": "head"}]
        if isinstance(self.modulations, MaskSet):
            # mask logits need a larger step than the head: at lr 1e-3 a logit starting at 1.0 takes
            # about 1,000 Adam steps to cross the rounding threshold (docs/design-notes.md, "Method")
            groups.append({"params": list(self.modulations.parameters()), "lr": cfg.mask_lr, "name": "masks"})
        elif self.modulations is not None and any(p.requires_grad for p in self.modulations.parameters()):
            groups.append({"params": list(self.modulations.parameters()), "lr": cfg.lr, "name": "ssf"})
        if self.train_encoder:
            groups.append({"params": list(self.model.backbone.parameters()), "lr": cfg.encoder_lr,
                           "name": "encoder"})
        return groups


def modulations_for(kind: Optional[str], backbone: Backbone, exp: ResolvedExperiment,
                    kept: dict | None = None) -> Optional[nn.Module]:
    if kind is None:
        return None
    if kind == "masks":
        return MaskSet(backbone.mask_sites(), exp.train.mask_init)
    if kind == "ssf":
        return ScaleShiftSet(backbone.mask_sites())
    if kind == "fixed_masks":
        from kwyn.lottery import FixedMaskSet

        return FixedMaskSet.from_kept(backbone.mask_sites(), kept)
    raise ValueError(f"unknown modulation kind {kind!r}")


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _state(module: Optional[nn.Module]):
    return {k: v.detach().cpu() for k, v in module.state_dict().items()} if module is not None else None


# -- the loop ------------------------------------------------------------------------------------------

def fit(exp: ResolvedExperiment, learner: Learner, train_set, valid_set, run_dir: Path, *, architecture: dict,
        modulation_kind: Optional[str], steps: int, runtime, progress: bool = True, extra: dict | None = None,
        on_step: Optional[Callable[[int], None]] = None, snapshot_at: Optional[int] = None) -> dict:
    """Train `learner` for `steps` steps; resumable; writes best.pt, history.csv, summary.json in run_dir.

    snapshot_at: also save the encoder + head state at this step (lottery rewinding) as rewind.pt.
    """
    cfg = exp.train
    run_dir.mkdir(parents=True, exist_ok=True)
    type_name, ttype = task_type(train_set, exp.name)
    model, masks = learner.model, learner.modulations if modulation_kind == "masks" else None
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
                               exp.sparsity.ratio_ramp, seed=cfg.seed, start=schedule.mask_start)
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
        teacher = TeacherCache(model, masks, train_set, clips, progress=progress and runtime.is_main)
    refit_model = None  # the re-fit's encoder: a physically trimmed copy, built when the re-fit starts
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
        return {"head": _state(model.head), "head_config": model.head.config, "modulation_kind": modulation_kind,
                "modulations": _state(learner.modulations), "architecture": architecture,
                "encoder": _state(model.backbone) if learner.train_encoder else None,
                "kept_units": {k: v.tolist() for k, v in learner.modulations.kept_units().items()}
                if hasattr(learner.modulations, "kept_units") else None}

    if snapshot_at == 0 and runtime.is_main and not (run_dir / "rewind.pt").exists():
        _save(snapshot(), run_dir / "rewind.pt")
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
            refit_model = _trimmed_twin(exp, model, masks, architecture, runtime)
        batch = _draw(sampler, len(train_set), cfg.batch_size)
        shard = distributed.shard(batch, runtime)
        audio, lengths, targets = ttype.collate(train_set, shard)
        audio, targets = audio.to(runtime.device), _to(targets, runtime.device)
        d_loss = None
        with distributed.autocast(runtime):
            if phase == "head":
                outputs = wrapped(audio, lengths, features=teacher(shard))
            elif phase == "refit":
                with torch.no_grad():
                    features = refit_model.features(audio, lengths)
                outputs = wrapped(audio, lengths, features=features)
            elif recipe is not None and recipe.distill:
                outputs, features = wrapped(audio, lengths, return_features=True)
                d_loss = distillation_loss(features, teacher(shard))
            else:
                outputs = wrapped(audio, lengths)
            task_loss = ttype.loss(outputs, targets)
            loss, s_loss = task_loss, torch.zeros(())
            if masks is not None and exp.sparsity.lambda_ > 0 and phase == "masks":
                s_loss = sparsity_loss(exp.sparsity.loss, masks.logits(), exp.sparsity.t)
                loss = task_loss + exp.sparsity.lambda_ * s_loss
            if d_loss is not None:
                loss = loss + recipe.distill * d_loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        state["step"] = done = step + 1
        if snapshot_at is not None and done == snapshot_at and runtime.is_main:
            _save(snapshot(), run_dir / "rewind.pt")

        # no validation in a head warm-up: selection never looks there, and the masks have not moved
        if (done % cfg.eval_every == 0 or done == steps) and phase != "head":
            if control is not None and phase == "masks":
                control.update(done, force=True)
            learner.eval()
            with distributed.autocast(runtime):
                outputs = predict(refit_model or model, valid_set, 32, val_indices)
            metrics = ttype.score(outputs, valid_set, val_indices)
            learner.train()
            has_masks = hasattr(learner.modulations, "kept_units")
            row = {"step": done, "loss": loss.item(), "task_loss": task_loss.item(),
                   "sparsity_loss": s_loss.item(), "val_metric": metrics[ttype.primary],
                   "trim_ratio": trimming_ratio(model.backbone, learner.modulations) if has_masks else 0.0,
                   "kept_units": sum(len(v) for v in learner.modulations.kept_units().values()) if has_masks
                   else None}
            if recipe is not None:  # the paper-faithful history keeps its columns
                row.update(phase=phase, distill_loss=d_loss.item() if d_loss is not None else None)
            state["history"].append(row)
            bar.set_postfix(val=f"{row['val_metric']:.3f}", trim=f"{row['trim_ratio']:.2f}")
            if done >= select_from and ttype.better(row["val_metric"], (state["best"] or {}).get("val_metric")):
                state["best"] = row
                if runtime.is_main:
                    _save({**snapshot(), "row": row}, run_dir / "best.pt")
        if (done % cfg.checkpoint_every == 0 or done == steps) and runtime.is_main:
            state["seconds"] = time.perf_counter() - started
            _save({"fingerprint": key, "learner": _trainable_state(learner), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "sampler": sampler.get_state(),
                   "torch_rng": torch.get_rng_state(), "state": state}, checkpoint_path)
        if on_step is not None:
            on_step(done)
    learner.eval()

    summary = {"experiment": exp.name, "method": exp.method, "task_type": type_name, "metric": ttype.primary,
               "steps": steps, "train_seconds": round(time.perf_counter() - started, 1), "selected": state["best"],
               "target_ratio": exp.target_ratio, "world_size": runtime.world_size, "device": str(runtime.device),
               "fingerprint": key}
    if runtime.is_main:
        _write_history(state["history"], run_dir / "history.csv")
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


def _importance_init(exp, learner: Learner, masks: MaskSet, train_set, ttype, runtime, count) -> None:
    """The recipe's `init: importance`: mask logits from each unit's gradient importance per parameter
    (kwyn.recipe.importance_logits), on batches of their own so that the training batches stay as they were."""
    drawn = torch.Generator().manual_seed(exp.train.seed + 3)
    batches = []
    for _ in range(exp.recipe.init_batches):
        audio, lengths, targets = ttype.collate(train_set, distributed.shard(_draw(drawn, len(train_set),
                                                                                 exp.train.batch_size), runtime))
        batches.append((audio.to(runtime.device), lengths, _to(targets, runtime.device)))
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


def _to(targets, device):
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    if isinstance(targets, (tuple, list)):
        return type(targets)(_to(t, device) for t in targets)
    return targets


def _write_history(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)) or [
            "step", "loss", "task_loss", "sparsity_loss", "val_metric", "trim_ratio", "kept_units"])
        writer.writeheader()
        writer.writerows(rows)


# -- one run per method --------------------------------------------------------------------------------

def train(exp: ResolvedExperiment, data_root: str | Path, run_dir: str | Path, *, progress: bool = True,
          on_step: Optional[Callable[[int], None]] = None, source_model_dir: str | Path | None = None) -> dict:
    """Train experiment `exp` (any method); resumable; returns the summary.

    source_model_dir: for method scratch, the trimmed model of its source kwyn experiment.
    """
    from kwyn.data.prepare import PreparedDataset

    cfg, run_dir = exp.train, Path(run_dir)
    runtime = distributed.setup(cfg.device, cfg.precision)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_set = PreparedDataset(data_root, "train", exp.task)
    valid_set = PreparedDataset(data_root, "valid", exp.task)
    if exp.method == "lottery":
        return train_lottery(exp, train_set, valid_set, run_dir, runtime=runtime, progress=progress)

    architecture, kind, train_encoder = {"init": "pretrained"}, None, False
    if exp.method == "kwyn":
        kind = "masks"
    elif exp.method == "ssf":
        kind = "ssf"
    elif exp.method == "scratch":
        if source_model_dir is None:
            raise ValueError(f"{exp.name}: method scratch needs the trimmed model of {exp.source}")
        architecture, train_encoder = scratch_architecture(source_model_dir), True
    elif exp.method == "convexity":
        from kwyn.convexity import choose_layers

        architecture = {"init": "pretrained", **choose_layers(exp, frozen_backbone(exp), train_set, run_dir,
                                                              progress=progress and runtime.is_main)}
        train_encoder = exp.convexity.finetune
    torch.manual_seed(cfg.seed)
    backbone = build_encoder(exp, architecture)  # scratch: built from config, so randomly initialised
    _, ttype = task_type(train_set, exp.name)
    head = ttype.make_head(backbone.embedding_dim, train_set)
    learner = Learner(task_model(backbone, head), modulations_for(kind, backbone, exp), train_encoder)
    return fit(exp, learner, train_set, valid_set, run_dir, architecture=architecture, modulation_kind=kind,
               steps=cfg.steps, runtime=runtime, progress=progress, on_step=on_step)


def train_lottery(exp: ResolvedExperiment, train_set, valid_set, run_dir: Path, *, runtime,
                  progress: bool = True) -> dict:
    """Structured lottery tickets (kwyn.lottery): round 0 fine-tunes the whole encoder + head; every
    later round scores the units still present after the previous round's training, removes the
    lowest-scored `share` of them, rewinds encoder and head to step `rewind_step` of round 0 and
    retrains. Each round is a resumable run in run_dir/round<r>."""
    from kwyn.lottery import FixedMaskSet, prune_round, unit_scores

    cfg, steps = exp.lottery, exp.lottery.steps or exp.train.steps
    if cfg.rewind_step > steps:
        raise ValueError(f"{exp.name}: lottery.rewind_step {cfg.rewind_step} is after the last step ({steps})")
    architecture = {"init": "pretrained"}
    backbone = build_encoder(exp, architecture)
    _, ttype = task_type(train_set, exp.name)
    torch.manual_seed(exp.train.seed)
    head = ttype.make_head(backbone.embedding_dim, train_set)
    masks = FixedMaskSet(backbone.mask_sites())
    learner = Learner(task_model(backbone, head), masks, train_encoder=True)
    scoring = torch.Generator().manual_seed(exp.train.seed + 2)
    summaries = []
    for r in range(cfg.rounds + 1):
        round_dir = run_dir / f"round{r}"
        if r > 0:
            batches = [ttype.collate(train_set, torch.randint(len(train_set), (exp.train.batch_size,),
                                                              generator=scoring).tolist())
                       for _ in range(cfg.score_batches)]
            batches = [(audio.to(runtime.device), _to(targets, runtime.device)) for audio, _, targets in batches]
            learner.eval()
            scores = unit_scores(cfg.score, learner.model, batches=[b if cfg.score == "gradient" else b[0]
                                                                    for b in batches],
                                 loss_fn=lambda model, batch: ttype.loss(model(batch[0]), batch[1]))
            masks.set_kept(prune_round(scores, masks.kept_units(), cfg.share))
            rewind = torch.load(run_dir / "round0" / "rewind.pt", map_location="cpu", weights_only=False)
            backbone.load_state_dict(rewind["encoder"])
            head.load_state_dict(rewind["head"])
        kept = {k: v.tolist() for k, v in masks.kept_units().items()}
        summaries.append(fit(exp, learner, train_set, valid_set, round_dir, architecture=architecture,
                             modulation_kind="fixed_masks", steps=steps, runtime=runtime, progress=progress,
                             extra={"round": r, "kept": kept}, snapshot_at=cfg.rewind_step if r == 0 else None))
    if runtime.is_main:
        copy_selected(run_dir / f"round{cfg.rounds}", run_dir)
    return {**summaries[-1], "rounds": summaries}


def load_trained(exp: ResolvedExperiment, run_dir: str | Path) -> tuple[TaskModel, Optional[nn.Module], dict]:
    """The selected (best) model of a run, its site modulations attached: (model, modulations, best)."""
    best_path = Path(run_dir) / "best.pt"
    if not best_path.exists():
        raise FileNotFoundError(f"{best_path} is missing: run the train stage of {exp.name} first")
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    backbone = build_encoder(exp, best["architecture"])
    if best["encoder"] is not None:
        backbone.load_state_dict(best["encoder"])
    head = build_head(best["head_config"])
    head.load_state_dict(best["head"])
    modulations = modulations_for(best["modulation_kind"], backbone, exp, best.get("kept_units"))
    if modulations is not None:
        modulations.load_state_dict(best["modulations"])
        for modulation in modulations.values():
            modulation.attach(backbone)
    return task_model(backbone, head).eval(), modulations, best


def copy_selected(round_dir: Path, run_dir: Path) -> None:
    """A run's top-level best.pt/summary.json: those of its last round (lottery)."""
    for name in ("best.pt", "summary.json", "history.csv"):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(round_dir / name, tmp)

"""Mask training that converges in a CPU budget: the phases of a run and the distillation teacher.

The paper trains masks and head together from the first step, for 100,000 steps. In a few hundred,
two things go wrong (issue F, README "Convergence in a CPU budget"): the head starts random, so the
first mask gradients carry little about the task; and while the ratio ramp removes units the head
chases a moving encoder, so validation collapses at the end of the ramp and recovers only slowly.
An experiment's `recipe` block (kwyn.params.Recipe) adds four remedies, each off by default:

  head_warmup  the head alone learns first, for this many steps before train.steps, on the full encoder's
               embeddings (from the teacher cache: one batched pass over the clips the run draws, then lookups);
  distill      while the masks learn, the masked encoder's embedding is pulled towards the full one
               (relative squared error), a dense signal on which units matter; with distill_frames, its frame
               sequence, frame by frame;
  ramp_refit   where the ratio ramp reaches its target, the head alone takes this many steps on the trimmed
               encoder's cached embeddings, so that validation does not collapse there and the masks train on
               under a head that fits what they keep (with refit_standardize, standardised as below);
  refit        the masks freeze after train.steps and the head alone re-fits, for this many steps, to
               what they keep (the encoder runs forward only); with refit_cache, on the trimmed encoder's
               embeddings of the whole training split, computed once, so that the head can be fit to convergence;
               with refit_standardize, in standardised coordinates (Standardized), folded back into the head.

Schedule says which phase each step is in; EmbeddingCache holds an encoder's embeddings of a split's clips
(the full encoder's, for the warm-up and distillation; the trimmed one's, for a cached re-fit).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class Schedule:
    """Steps [0, mask_start) warm up the head, [mask_start, refit_start) train masks and head, the rest re-fit.

    train.steps are the mask-training steps, the expensive ones; the recipe's warm-up comes before them (its
    steps cost one batched pass over the clips they draw, then lookups) and its re-fit after them (encoder forward only).

        schedule = Schedule.of(steps=200, recipe=Recipe(head_warmup=100, refit=50))
        schedule.phase(0), schedule.phase(100), schedule.phase(300)   # 'head', 'masks', 'refit'
        schedule.steps, schedule.mask_steps                            # 350, 200 (what the ratio ramp spans)
    """
    steps: int
    mask_start: int
    refit_start: int

    @classmethod
    def of(cls, steps: int, recipe=None) -> "Schedule":
        if recipe is None:
            return cls(steps, 0, steps)
        return cls(recipe.head_warmup + steps + recipe.refit, recipe.head_warmup, recipe.head_warmup + steps)

    @property
    def mask_steps(self) -> int:
        return self.refit_start - self.mask_start

    def phase(self, step: int) -> str:
        """The phase of the step that starts at `step` (0-based)."""
        if step < self.mask_start:
            return "head"
        return "masks" if step < self.refit_start else "refit"


class EmbeddingCache:
    """An encoder's embeddings of a split's clips, computed once, on first use; then a target costs a lookup.

    The distillation teacher is the student's own encoder with its masks switched off (pass `masks`:
    MaskSet.disabled), so it costs no second copy of the weights; a cached re-fit embeds with the
    physically trimmed encoder (masks None). `clips` (default: every clip of the dataset) are embedded in
    fixed chunks of `batch_size`, in index order, so the values depend on nothing a run does: a resumed
    run, which starts with an empty cache, recomputes exactly the values the uninterrupted run had.
    frames: cache the frame sequence (backbone.sequence, (frames, dim) per clip) instead of its time
    average (recipe.distill_frames); `pooled` gives the time average, what the head reads, either way.

        teacher = EmbeddingCache(model, masks, train_set, clips=[3, 17])
        targets = teacher([3, 17, 3])   # (3, D): the unmasked encoder's embeddings of clips 3, 17, 3
        len(teacher)                    # 2 clips embedded, at the first call
    """

    def __init__(self, model, masks, dataset, clips=None, batch_size: int = 32, progress: bool = False,
                 frames: bool = False):
        from kwyn.model import AsrModel

        if not hasattr(model, "features") or isinstance(model, AsrModel):
            raise ValueError("recipe head_warmup, distill and refit_cache need a pooled task (classification or "
                             "tagging): what is cached is the time-averaged embedding")
        if frames and not model.backbone.has_sequence():
            raise ValueError(f"recipe distill_frames needs a backbone with a frame sequence; "
                             f"{type(model.backbone).__name__} pools time away inside the encoder")
        self.model, self.masks, self.dataset, self.frames = model, masks, dataset, frames
        self.clips = sorted(set(range(len(dataset)) if clips is None else clips))
        self.batch_size, self.progress = batch_size, progress
        self.table: torch.Tensor | None = None
        self.row = torch.full((len(dataset),), -1, dtype=torch.long)
        self.row[self.clips] = torch.arange(len(self.clips))

    def __len__(self) -> int:
        return 0 if self.table is None else len(self.table)

    @torch.no_grad()
    def _embed(self) -> torch.Tensor:
        from kwyn.io import tqdm

        device = next(self.model.head.parameters()).device
        chunks = [self.clips[i:i + self.batch_size] for i in range(0, len(self.clips), self.batch_size)]
        rows = []
        with self.masks.disabled() if self.masks is not None else nullcontext():
            for chunk in tqdm(chunks, desc="embeddings", leave=False, disable=not self.progress):
                audio = torch.stack([self.dataset[i][0] for i in chunk]).to(device)
                embedded = self.model.backbone.sequence(audio)[0] if self.frames else self.model.features(audio)
                rows.append(embedded.float().cpu())
        return torch.cat(rows)

    def __call__(self, indices: list[int]) -> torch.Tensor:
        rows = self.row[torch.as_tensor(indices, dtype=torch.long)]
        if (rows < 0).any():
            raise KeyError(f"clips {sorted({i for i, r in zip(indices, rows.tolist()) if r < 0})[:5]} are not in "
                           "the embedding cache: pass every clip the run draws as `clips`")
        if self.table is None:
            self.table = self._embed()
        return self.table[rows].to(next(self.model.head.parameters()).device)

    def all(self) -> torch.Tensor:
        """(clips, D) or (clips, frames, D): the embeddings of every cached clip, in index order."""
        return self(self.clips)

    def pooled(self, indices: list[int]) -> torch.Tensor:
        """(len(indices), D): the embeddings the head reads (cached frames averaged over time, as `embed` does)."""
        cached = self(indices)
        return cached.mean(dim=1) if self.frames else cached


class Standardized:
    """The re-fit in standardised coordinates (recipe.refit_standardize), folded back into the paper's head.

    A trimmed encoder's pooled embedding keeps a large offset per dimension (Whisper tiny at 75 % removed: mean
    |offset| 0.46 against a spread of 0.05), so a head fitted on it by Adam in a few hundred steps is badly
    conditioned and far from its optimum (benchmarks/results/refit_standardize.md). `enter` rewrites the head's
    first linear layer to read (x - shift) / scale, the training split's statistics, leaving its function as it
    was; the re-fit then feeds `features(x)`; `raw_state` folds the scaling back, so what is saved and trimmed
    is the same MLP reading the raw embedding, with the same outputs.

        standardized = Standardized.of(train_cache.all())
        standardized.enter(head)                        # head(standardized.features(x)) == old head(x)
        standardized.raw_state(head)                    # a state_dict of the head reading x itself
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        self.shift, self.scale = shift, scale

    @classmethod
    def of(cls, embeddings: torch.Tensor) -> "Standardized":
        # a dimension with no spread keeps scale 1: nothing to rescale, and no division by zero
        scale = embeddings.std(dim=0)
        return cls(embeddings.mean(dim=0), torch.where(scale > 1e-6, scale, torch.ones_like(scale)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift.to(x)) / self.scale.to(x)

    @torch.no_grad()
    def enter(self, head) -> None:
        first = head[0]
        first.bias.add_(first.weight @ self.shift.to(first.weight))
        first.weight.mul_(self.scale.to(first.weight))

    def raw_state(self, head) -> dict:
        state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        weight = state["0.weight"] / self.scale.cpu().to(state["0.weight"])
        state["0.bias"] = state["0.bias"] - weight @ self.shift.cpu().to(weight)
        state["0.weight"] = weight
        return state


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relative squared error ||s - t||^2 / ||t||^2 over the batch (embeddings (B, D), or frames (B, T, D)): 0
    when the masked encoder gives the full encoder's values, 1 when it gives zeros, whatever their scale."""
    teacher = teacher.to(student.dtype)
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


def unit_costs(count, masks) -> torch.Tensor:
    """Parameters each unit costs (what removing the first unit of its site saves), in MaskSet order."""
    full = {name: mask.logits.numel() for name, mask in masks.by_site().items()}
    total = count(full)
    return torch.cat([torch.full((n,), float(total - count({**full, name: n - 1}))) for name, n in full.items()])


def importance_logits(importance: torch.Tensor, costs: torch.Tensor, mask_init: float) -> torch.Tensor:
    """mask_init + standardised log(importance per parameter): the ranking ratio control starts from.

    A unit twice as important per parameter as another starts log(2)/std higher; the spread (std 1) is
    what a few dozen Adam steps at the recipe's mask lr can still overturn."""
    score = torch.log(importance.double().clamp_min(1e-30) / costs.double().clamp_min(1))
    return (mask_init + (score - score.mean()) / score.std().clamp_min(1e-12)).float()


def gradient_importance(learner, masks, batches, loss_fn) -> torch.Tensor:
    """Per unit, the sum over batches of the squared gradient of the task loss w.r.t. its mask logit (an
    empirical Fisher information of keeping the unit), in MaskSet order; the logits are left as they were."""
    total = None
    for audio, lengths, targets in batches:
        for mask in masks.values():
            mask.logits.grad = None
        loss_fn(learner(audio, lengths), targets).backward()
        squared = torch.cat([mask.logits.grad.detach().float().cpu() ** 2 for mask in masks.values()])
        total = squared if total is None else total + squared
    for mask in masks.values():
        mask.logits.grad = None
    learner.zero_grad(set_to_none=True)
    return total

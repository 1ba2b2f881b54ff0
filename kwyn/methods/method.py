"""The protocol of a method: everything the rest of kwyn asks of one, so that no module compares method names.

A method is one way to get a task specialist from a pretrained encoder: what is hooked into the
encoder (a kwyn.sites.SiteModulationSet, or nothing), whether the encoder learns, which params.yaml
blocks its experiments carry, how it runs (one fit of kwyn.loop, or rounds), what it removes, and
how the report names and draws it. params, grid, train, evaluate and report ask the registry
(kwyn.methods.METHODS); adding a method is one module, one registry line and its tests.

    class Probe(Method):
        name, label, style = "base", "base (frozen encoder + head)", dict(marker="*", ls="", color="grey")
    METHODS["base"].run(RunContext(exp, train_set, valid_set, run_dir, runtime))
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Optional

BLOCKS = ("sparsity", "recipe", "lottery", "convexity", "hardconcrete")  # an experiment's per-method blocks


@dataclass
class RunContext:
    """What a method's run gets from kwyn.train.train: the experiment, its data, where to write, where to compute."""
    exp: object  # kwyn.params.ResolvedExperiment
    train_set: object
    valid_set: object
    run_dir: Path
    runtime: object  # kwyn.distributed.Runtime
    progress: bool = True
    on_step: Optional[Callable[[int], None]] = None
    source_model_dir: Optional[Path] = None  # scratch: the trimmed model of its source experiment
    # the history and last validation written here too, at every validation (kwyn.loop.write_live)
    live_dir: Optional[Path] = None


class Method:
    name: ClassVar[str]
    label: ClassVar[str]  # the report's legend
    style: ClassVar[dict]  # matplotlib marker, line style and colour of its points
    # the SiteModulationSet it hooks at the encoder's mask sites, as "module:class" (imported when a run needs it,
    # so that validating params.yaml does not load torch)
    modulations: ClassVar[Optional[str]] = None
    blocks: ClassVar[tuple[str, ...]] = ()  # params.yaml blocks its experiments may carry (of BLOCKS)
    ratio_block: ClassVar[Optional[str]] = None  # the block whose `ratio` a grid fills, one experiment per ratio
    removes_units: ClassVar[bool] = False  # gives a smaller model: a curve of metric vs trimming
    selectable: ClassVar[bool] = False  # a candidate of Table II's "fastest within 5 % of base"
    table2_name: ClassVar[Optional[str]] = None  # its Table II variant name (default: its name)
    table1_prefix: ClassVar[Optional[str]] = None  # Table I columns <prefix>_25/50/75 (the paper's: ours, scratch)
    table1_best: ClassVar[Optional[str]] = None  # Table I columns <name>_trim_pct/_score of its best run
    learns_masks: ClassVar[bool] = False  # trains unit masks at train.mask_lr (its results record mask_lr)
    in_experiments: ClassVar[bool] = True  # declared under `experiments:` (scratch: under `scratch:`)
    in_rounds: ClassVar[bool] = False  # trains in rounds, each a model of its own (kwyn.runs.round_dirs)

    def check(self, exp) -> None:
        """Validate (and complete) the blocks of a params.yaml experiment of this method; raise ValueError."""

    def skip_reason(self, backbone: str, task_type: str) -> Optional[str]:
        """Why a grid gives this method no experiment for this backbone and task type (None: it does)."""
        return None

    def target_ratio(self, exp) -> Optional[float]:
        block = getattr(exp, self.ratio_block) if self.ratio_block else None
        return getattr(block, "ratio", None) if block is not None else None

    def run(self, ctx: RunContext) -> dict:
        """Train one experiment into ctx.run_dir (resumable); returns its summary. The default: one fit."""
        from kwyn.loop import fit

        exp = ctx.exp
        architecture = self.architecture(ctx)
        learner = self.learner(exp, ctx.train_set, architecture)
        return fit(exp, learner, ctx.train_set, ctx.valid_set, ctx.run_dir, architecture=architecture,
                   steps=exp.train.steps, runtime=ctx.runtime, progress=ctx.progress, on_step=ctx.on_step,
                   live_dir=ctx.live_dir)

    def learner(self, exp, train_set, architecture: dict | None = None):
        """What a run of this method optimises before its first step (kwyn.loop.Learner): the encoder (seeded by
        train.seed), a fresh head for the task and the method's modulations, attached."""
        from kwyn.loop import Learner
        from kwyn.metrics import task_type
        from kwyn.model import task_model
        from kwyn.runs import build_encoder

        import torch

        torch.manual_seed(exp.train.seed)
        backbone = build_encoder(exp, architecture or {"init": "pretrained"})  # scratch: from config, random init
        _, ttype = task_type(train_set, exp.name)
        head = ttype.make_head(backbone.embedding_dim, train_set)
        return Learner(task_model(backbone, head), self.make_modulations(backbone, exp), self.trains_encoder(exp))

    def modulation_set(self) -> Optional[type]:
        """The class of self.modulations (a kwyn.sites.SiteModulationSet), or None."""
        if self.modulations is None:
            return None
        module, name = self.modulations.split(":")
        return getattr(importlib.import_module(module), name)

    def make_modulations(self, backbone, exp):
        """The set a run of this method hooks into its encoder (None: nothing); a method may configure it further."""
        return self.modulation_set().for_run(backbone.mask_sites(), exp.train) if self.modulations else None

    def architecture(self, ctx: RunContext) -> dict:
        """The encoder a run starts from (kwyn.runs.build_encoder), recorded in best.pt."""
        return {"init": "pretrained"}

    def trains_encoder(self, exp) -> bool:
        return False

    def result(self, exp, run_dir: Path) -> dict:
        """What the evaluate stage adds to the run's metrics (convexity: its per-layer scores)."""
        return {}

    def setting(self, result: dict) -> str:
        """A result's setting in the report's tables: the method and what distinguishes its runs."""
        return self.name


def require_absent(exp, method: Method) -> None:
    """Blocks of other methods are errors: they would be silently ignored."""
    for block in BLOCKS:
        if getattr(exp, block, None) is not None and block not in method.blocks:
            owners = ", ".join(repr(m) for m in _owners(block)) or "no method"
            raise ValueError(f"a '{block}' block belongs to {owners}, not method {method.name!r}: remove it")


def _owners(block: str) -> list[str]:
    from kwyn.methods import METHODS

    return [name for name, m in METHODS.items() if block in m.blocks]

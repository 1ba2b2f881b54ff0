"""The train stage: one experiment of params.yaml trained into its run directory, by its method.

The methods (params.yaml `method`, and the `scratch:` section) are in kwyn.methods, one module each:
  base          frozen encoder + head (a linear-probe-like baseline)
  ssf           frozen encoder, a scale and a shift per unit at every mask site + head (kwyn.ssf)
  kwyn          frozen encoder, a learned binary mask per unit + head, with the sparsity loss, or ratio
                control landing on a requested trimming ratio (kwyn.masks), optionally a recipe (kwyn.recipe)
  hardconcrete  frozen encoder, HardConcrete gates per unit + head, a Lagrangian on the expected size
                (DPHuBERT's masks; kwyn.hardconcrete)
  scratch       the architecture a kwyn run kept, re-initialised and trained whole (encoder unfrozen)
  lottery       rounds of fine-tuning, unit scoring and removal of a share, rewinding (kwyn.lottery)
  convexity     the layers after the most class-convex one dropped, then head (+ encoder) training
                (kwyn.convexity)
Each runs kwyn.loop.fit (resumable) and writes the run directory described in kwyn.runs.

    summary = train(experiment("crepe_pitch_kwyn_50"), "data/notes/prepared", "runs/crepe_pitch_kwyn_50")
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from kwyn import distributed
from kwyn.methods import RunContext, method_of
from kwyn.params import ResolvedExperiment


def train(exp: ResolvedExperiment, data_root: str | Path, run_dir: str | Path, *, progress: bool = True,
          on_step: Optional[Callable[[int], None]] = None, source_model_dir: str | Path | None = None,
          live_dir: str | Path | None = None) -> dict:
    """Train experiment `exp` (any method); resumable; returns the summary.

    source_model_dir: for method scratch, the trimmed model of its source kwyn experiment;
    live_dir: where the history and the last validation are also written (kwyn.loop.write_live).
    """
    from kwyn.data.prepare import PreparedDataset

    cfg = exp.train
    runtime = distributed.setup(cfg.device, cfg.precision)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    context = RunContext(exp, PreparedDataset(data_root, "train", exp.task), PreparedDataset(data_root, "valid", exp.task),
                         Path(run_dir), runtime, progress, on_step,
                         Path(source_model_dir) if source_model_dir is not None else None,
                         Path(live_dir) if live_dir is not None else None)
    return method_of(exp).run(context)

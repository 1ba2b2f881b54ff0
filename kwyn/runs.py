"""A run directory and the models in it: the encoder a run starts from, and the model it selected.

A run directory (runs/<experiment>/) holds:
  checkpoint.pt   the latest state (resumed from when a run is restarted with the same settings)
  best.pt         what is needed to rebuild the model at the best validation metric (from
                  `select_after` on): head, site modulations (their `kind`), encoder weights when they
                  learn, and the architecture (kept units, kept layers)
  history.csv     one row per validation: losses, metric, trimming ratio, kept units (rewritten at
                  every validation, so a run can be followed while it trains)
  kept_units.csv  for the sets that remove units, one row per validation and site: units, kept (the
                  share kept per layer and site kind over training, 02_train_masks's figure)
  summary.json    written last: what was selected and how long it took
A method that trains in rounds (lottery) holds one such directory per round (round0, round1, ...)
and a top-level best.pt/summary.json/history.csv copied from its last round.

The trim and evaluate stages rebuild a run's selected model with `load_trained`.

    model, modulations, best = load_trained(exp, "runs/crepe_pitch_kwyn_50")
    modulations.kept_units()      # the units the masks keep (None for a set that removes nothing)
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch

from kwyn.backbones import Backbone, build_backbone, load_backbone
from kwyn.heads import build_head
from kwyn.io import atomic_path
from kwyn.model import TaskModel, task_model
from kwyn.params import ResolvedExperiment
from kwyn.sites import SiteModulationSet
from kwyn.trim import trim_model


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


# -- the selected model ---------------------------------------------------------------------------------

def load_trained(exp: ResolvedExperiment, run_dir: str | Path) -> tuple[TaskModel, Optional[SiteModulationSet], dict]:
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
    modulations = None
    if best["modulation_kind"] is not None:
        from kwyn.methods import modulation_set

        modulations = modulation_set(best["modulation_kind"]).for_run(backbone.mask_sites(), exp.train,
                                                                       best.get("kept_units"))
        modulations.load_state_dict(best["modulations"])
        modulations.attach(backbone)
        modulations.eval()  # hooked, not a submodule of the model: its mode is set here (HardConcrete samples in training)
    return task_model(backbone, head).eval(), modulations, best


def copy_selected(round_dir: Path, run_dir: Path) -> None:
    """A run's top-level best.pt/summary.json/history.csv (and kept_units.csv): those of its last round (lottery)."""
    optional = ["kept_units.csv"] if (round_dir / "kept_units.csv").exists() else []
    for name in ["best.pt", "summary.json", "history.csv", *optional]:
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(round_dir / name, tmp)


def round_dirs(run_dir: str | Path) -> list[Path]:
    """The round directories of a run that trains in rounds (round0, round1, ...), in order; [] for one fit."""
    return sorted((p for p in Path(run_dir).glob("round*") if (p / "best.pt").exists()),
                  key=lambda p: int(p.name.removeprefix("round")))

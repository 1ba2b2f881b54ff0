"""Physically trimmed models: build from trained masks, save, and rebuild in a fresh process.

On disk (DPHuBERT's idea: config + weights, rebuilt from the config):
  config.json         backbone config (names its family), head config, kept unit indices per
                      site, units per site before trimming, the kind of site modulation kept
                      with the model (SSF's scale-and-shift; none for trimmed models) and
                      free-form metadata, and what inference needs ("inference", written by the trim stage,
                      kwyn.inference uses it): task_type, labels (the label names in output order;
                      ASR: none, the head's config holds its vocabulary), sample_rate, clip_seconds and
                      offset_seconds (the clips the model was trained on)
  model.safetensors   weights of the trimmed backbone ("backbone.*"), head ("head.*") and
                      modulations ("modulations.*")
Rebuilding = build the backbone from its config, trim it to the kept units, re-attach the
modulations, load the weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kwyn.backbones import Backbone, build_backbone
from kwyn.heads import build_head
from kwyn.io import atomic_path
from kwyn.model import TaskModel, task_model


def trim_model(backbone: Backbone, kept_units: dict[str, list[int]]) -> Backbone:
    """Remove every unmasked-out unit in place and return the backbone (no hooks may be attached)."""
    backbone.trim({site: torch.as_tensor(idx, dtype=torch.long) for site, idx in kept_units.items()})
    return backbone


def inference_config(data_root: str | Path, task: str, offset_seconds: float = 0.0) -> dict:
    """What a saved model needs to predict (config.json's "inference"), read from the prepared dataset it was
    trained on: the task type and label names as training saw them (kwyn.metrics.task_type), the sample rate
    and clip length; offset_seconds, where preparation cut each clip, is the dataset's params.yaml key."""
    from kwyn.data.prepare import PreparedDataset
    from kwyn.metrics import task_type

    dataset = PreparedDataset(data_root, "test", task)
    type_name, _ = task_type(dataset)
    config = {"task_type": type_name, "sample_rate": dataset.sample_rate, "clip_seconds": dataset.clip_seconds,
              "offset_seconds": offset_seconds}
    if type_name != "asr":  # an ASR head's config holds its vocabulary already
        config["labels"] = dataset.classes
    return config


def save_trimmed(model: TaskModel, kept_units: dict[str, list[int]], site_units: dict[str, int], path: str | Path,
                 metadata: dict | None = None, base_config: dict | None = None, modulations: str | None = None,
                 inference: dict | None = None) -> None:
    """Save a TaskModel whose backbone was trimmed to `kept_units`.

    base_config is the backbone's config before trimming (defaults to model.backbone.config);
    modulations: the `kind` of the SiteModulationSet that model.modulations holds and that stays in the trimmed
    model (SSF's scale-and-shift, "ssf"), re-attached by hooks at load;
    inference: what its predict needs (inference_config); without it the saved model gives logits only.
    """
    n_outputs = model.head.config.get("n_outputs")
    if inference and "labels" in inference and len(inference["labels"]) != n_outputs:
        raise ValueError(f"inference names {len(inference['labels'])} labels but the head has {n_outputs} outputs: "
                         "the labels come from another dataset than the one the model was trained on")
    config = {"backbone": base_config or model.backbone.config, "head": model.head.config,
              "kept_units": {k: [int(i) for i in v] for k, v in kept_units.items()},
              "site_units": site_units, "modulations": modulations, "metadata": metadata or {}}
    if inference is not None:
        config["inference"] = inference
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, tmp / "model.safetensors")


def load_trimmed(path: str | Path) -> TaskModel:
    """Rebuild a saved trimmed model (no masks, no hooks), in eval mode; its predict() takes audio files or
    arrays and gives labels (or text) when the model was saved with its inference config."""
    path = Path(path)
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} is not a trimmed model: it needs config.json and model.safetensors")
    config = json.loads((path / "config.json").read_text())
    backbone = trim_model(build_backbone(config["backbone"]), config["kept_units"])
    model = task_model(backbone, build_head(config["head"]))  # an ASR head's config holds its vocabulary
    if config.get("modulations") is not None:  # a set that stays in the trimmed model (SSF's scale-and-shift)
        from kwyn.methods import modulation_set

        model.modulations = modulation_set(config["modulations"]).for_run(backbone.mask_sites(), None)
        model.modulations.attach(backbone)
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.config, model.path = config, path  # model.predict reads "inference" and names the path in its errors
    return model.eval()

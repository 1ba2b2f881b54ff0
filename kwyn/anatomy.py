"""The method one step at a time: what the stage notebooks show of a run besides running it.

02_train_masks and 03_trim_and_evaluate call these to make each mechanism visible on the experiment they run:
the settings a run resolves to, the gradient that reaches every mask logit through the straight-through
estimator, the cut ratio control makes, the learned logits against the threshold, the share of units each
site keeps over training, the parameters trimming removes per layer, and the trimmed encoder's cost beside the
full one's. Each returns a pandas table; the notebooks draw them.

    learner = method_of(exp).learner(exp, train_set)             # encoder, head and masks, before step 0
    mask_gradients(learner, training_batch(exp, train_set))      # per site: |grad| of the logits, units on
    parameters_by_layer(full_encoder, trimmed_encoder)           # per layer: parameters before and after
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch


def settings(exp) -> pd.DataFrame:
    """What an experiment resolves to (its own keys over params.yaml's shared train and profile blocks), one
    row per setting, flattened to dotted keys; unset (None) settings are left out."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif value is not None:
            flat[prefix] = value if not isinstance(value, list) else ", ".join(map(str, value))

    walk("", exp.model_dump(mode="json", by_alias=True, exclude={"dataset_params"}))
    return pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=pd.Index(list(flat), name="setting"))


def training_batch(exp, train_set, seed_offset: int = 4):
    """One batch of train.batch_size training clips, drawn by a generator of its own (train.seed + seed_offset),
    so that showing it leaves a run's own draws as they are: (audio, lengths, targets)."""
    from kwyn.metrics import task_type

    _, ttype = task_type(train_set, exp.name)
    drawn = torch.Generator().manual_seed(exp.train.seed + seed_offset)
    return ttype.collate(train_set, torch.randint(len(train_set), (exp.train.batch_size,), generator=drawn).tolist())


def mask_gradients(learner, batch, train_set) -> pd.DataFrame:
    """One forward and backward pass of the task loss; per site, what reaches the modulation's parameters.

    For the paper's masks the forward value of a unit is round(sigmoid(logit - threshold)), 0 or 1, whose true
    derivative is zero almost everywhere; the straight-through estimator hands the gradient of that value to the
    logit unchanged, so every unit's logit gets a gradient (`grad_norm` > 0) although no unit is switched off
    yet (`units_on` = `units`). The learner's gradients are cleared afterwards."""
    from kwyn.metrics import task_type

    _, ttype = task_type(train_set)
    audio, lengths, targets = batch
    learner.zero_grad(set_to_none=True)
    learner.train()
    loss = ttype.loss(learner(audio, lengths), targets)
    loss.backward()
    rows = []
    for name, modulation in learner.modulations.by_site().items():
        grads = [p.grad.detach().flatten() for p in modulation.parameters() if p.grad is not None]
        grad = torch.cat(grads) if grads else torch.zeros(0)
        on = modulation.unit_values().detach() if hasattr(modulation, "unit_values") else None
        rows.append({"site": name, "kind": modulation.site.kind, "units": modulation.site.units,
                     "units_on": int((on > 0.5).sum()) if on is not None else None,
                     "grad_norm": float(grad.norm()) if len(grad) else 0.0,
                     "mean_abs_grad": float(grad.abs().mean()) if len(grad) else 0.0})
    learner.zero_grad(set_to_none=True)
    learner.eval()
    table = pd.DataFrame(rows).set_index("site")
    table.attrs["task_loss"] = loss.item()
    return table


def ratio_control_cut(learner, exp) -> pd.DataFrame:
    """The cut ratio control makes on the learner's current mask logits at the end of its ramp (the requested
    sparsity.ratio): per site, the units kept, and in `attrs` the threshold and the share of encoder parameters
    removed, counted exactly. Moves the masks' threshold (and adds ratio control's tiny seeded jitter)."""
    from kwyn.loop import trimming_ratio
    from kwyn.masks import RatioControl

    if exp.sparsity is None or exp.sparsity.ratio is None:
        raise ValueError(f"{exp.name} asks for no trimming ratio (sparsity.ratio): ratio control is not used")
    masks, backbone = learner.modulations, learner.model.backbone
    control = RatioControl(backbone, masks, exp.sparsity.ratio, exp.train.steps, exp.sparsity.ratio_ramp,
                           seed=exp.train.seed, multiple_of=exp.sparsity.multiple_of)
    control.update(exp.train.steps, force=True)
    kept = masks.kept_units()
    table = pd.DataFrame([{"site": name, "kind": mask.site.kind, "units": mask.site.units, "kept": len(kept[name])}
                          for name, mask in masks.by_site().items()]).set_index("site")
    table.attrs.update(threshold=float(next(iter(masks.values())).threshold),
                       removed=trimming_ratio(backbone, {k: v.tolist() for k, v in kept.items()}))
    return table


def mask_logits(masks) -> pd.DataFrame:
    """Every unit's learned logit against its site's threshold (a unit is kept when logit > threshold): one row
    per unit, with `margin` = logit - threshold."""
    rows = []
    for name, mask in masks.by_site().items():
        logits = mask.logits.detach().cpu()
        threshold = float(mask.threshold)
        rows += [{"site": name, "kind": mask.site.kind, "unit": i, "logit": float(v), "threshold": threshold,
                  "margin": float(v) - threshold, "kept": bool(v > threshold)} for i, v in enumerate(logits)]
    return pd.DataFrame(rows)


def kept_share(run_dir: str | Path) -> pd.DataFrame:
    """The share of units each site kept at every validation of a run (its kept_units.csv): sites as rows (in the
    backbone's order), validation steps as columns; empty for a run whose method removes nothing."""
    path = Path(run_dir) / "kept_units.csv"
    if not path.exists():
        return pd.DataFrame()
    rows = pd.read_csv(path)
    rows["share"] = rows["kept"] / rows["units"]
    rows["label"] = rows["site"] + " (" + rows["kind"].str.replace("_", " ") + ")"
    order = list(dict.fromkeys(rows["label"]))
    return rows.pivot(index="label", columns="step", values="share").loc[order]


def layer_of(parameter: str) -> str:
    """The layer a parameter belongs to, from its name: up to its first numeric part (`layers.3.fc1.weight`:
    `layers.3`), else its first part (`conv2.weight`: `conv2`)."""
    parts = parameter.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return parts[0]


def parameters_by_layer(full: torch.nn.Module, trimmed: torch.nn.Module) -> pd.DataFrame:
    """Parameters per layer of the full and the trimmed encoder, and the share trimming removed; layers (kwyn.anatomy.
    layer_of, after any prefix every parameter name shares) in the full encoder's order. The columns sum to the
    two encoders' parameter counts."""
    names = [name for name, _ in full.named_parameters()]
    # a prefix every parameter shares (Whisper's `encoder.`) names no layer
    common = 0
    while len(names) > 1 and all(n.split(".")[common:common + 1] == names[0].split(".")[common:common + 1]
                                 and len(n.split(".")) > common + 1 for n in names):
        common += 1

    def count(model) -> dict[str, int]:
        per_layer: dict[str, int] = {}
        for name, parameter in model.named_parameters():
            layer = layer_of(".".join(name.split(".")[common:]))
            per_layer[layer] = per_layer.get(layer, 0) + parameter.numel()
        return per_layer

    before, after = count(full), count(trimmed)
    table = pd.DataFrame({"full": before, "trimmed": {k: after.get(k, 0) for k in before}})
    table.index.name = "layer"
    table["removed"] = 1 - table["trimmed"] / table["full"].where(table["full"] > 0, math.nan)
    return table


def cost_table(result: dict) -> pd.DataFrame:
    """An evaluation's encoder cost (kwyn.evaluate result): parameters, size, GFLOPs and latency of the full and
    the trimmed encoder, and full / trimmed (how many times smaller or faster)."""
    rows = {"parameters (M)": ("params", 1e-6), "size (MB)": ("size_mb", 1), "GFLOPs": ("gflops", 1),
            "latency (ms)": ("latency_ms", 1)}
    table = pd.DataFrame({label: {"full": result[f"full_{key}"] * scale, "trimmed": result[key] * scale}
                          for label, (key, scale) in rows.items()}).T
    table["full / trimmed"] = table["full"] / table["trimmed"]
    return table

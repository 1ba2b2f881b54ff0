"""params.yaml: schema, validation and the resolved view of one experiment.

Every stage validates the whole file when it starts, so a typo stops the pipeline at once
with a message naming the key and the allowed values, not an hour later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPARSITY_LOSSES = ("paper", "authors_code")
METHODS = ("base", "kwyn")
DATASET_TASKS = {"soundfont_notes": ("pitch", "instrument_family")}


class ParamsError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            allowed = {field.alias or name for name, field in cls.model_fields.items()}
            unknown = sorted(set(data) - allowed)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
        return data


class SoundfontNotes(_Strict):
    """NSynth-like notes rendered from the General MIDI soundfont shipped with pretty_midi."""
    kind: Literal["soundfont_notes"]
    seed: int = 0
    sample_rate: int = Field(16000, gt=0)
    note_seconds: float = Field(1.0, gt=0)
    pitches: tuple[int, int] = (48, 84)
    velocities: list[int] = [100]
    families: Optional[list[str]] = None  # NSynth family names to render; None: every family
    split_per_family: tuple[int, int, int] = (6, 1, 1)
    clip_seconds: float = Field(0.064, gt=0)
    offset_seconds: float = Field(0.1, ge=0)
    on_bad_audio: Literal["error", "skip"] = "error"
    workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _ranges(self):
        from kwyn.data.nsynth import NSYNTH_FAMILIES

        unknown = sorted(set(self.families or ()) - set(NSYNTH_FAMILIES))
        if unknown:
            raise ValueError(f"families: unknown {unknown}; known: {NSYNTH_FAMILIES}")
        if not 0 <= self.pitches[0] <= self.pitches[1] <= 127:
            raise ValueError(f"pitches must be [low, high] MIDI notes within 0..127, got {list(self.pitches)}")
        return self


class Train(_Strict):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    mask_lr: float = Field(0.05, gt=0)
    mask_init: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    val_examples: int = Field(128, ge=1)
    select_after: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    threads: int = Field(2, ge=1)


class TrainOverrides(_Strict):
    steps: Optional[int] = Field(None, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    mask_lr: Optional[float] = Field(None, gt=0)
    mask_init: Optional[float] = Field(None, gt=0)
    eval_every: Optional[int] = Field(None, ge=1)
    checkpoint_every: Optional[int] = Field(None, ge=1)
    val_examples: Optional[int] = Field(None, ge=1)
    select_after: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[int] = None
    threads: Optional[int] = Field(None, ge=1)


class Sparsity(_Strict):
    loss: Literal["paper", "authors_code"] = "paper"
    t: float = Field(0.5, ge=0, le=1)
    lambda_: float = Field(1.0, ge=0, alias="lambda")


class Profile(_Strict):
    input_seconds: float = Field(0.064, gt=0)
    batch: int = Field(1, ge=1)
    repeats: int = Field(30, ge=1)
    warmup: int = Field(5, ge=0)
    threads: int = Field(1, ge=1)
    eval_batch_size: int = Field(32, ge=1)


class Experiment(_Strict):
    backbone: str
    checkpoint: Optional[str] = None
    dataset: str
    task: str
    method: Literal["base", "kwyn"]
    sparsity: Optional[Sparsity] = None
    train: TrainOverrides = TrainOverrides()

    @model_validator(mode="after")
    def _sparsity_for_kwyn(self):
        if self.method == "kwyn" and self.sparsity is None:
            raise ValueError("method 'kwyn' needs a 'sparsity' block (loss, t, lambda)")
        if self.method == "base" and self.sparsity is not None:
            raise ValueError("method 'base' trains no mask: remove its 'sparsity' block")
        return self


class Params(_Strict):
    datasets: dict[str, SoundfontNotes]
    train: Train = Train()
    profile: Profile = Profile()
    experiments: dict[str, Experiment]

    @model_validator(mode="after")
    def _references(self):
        from kwyn.backbones import BACKBONES

        for name, exp in self.experiments.items():
            where = f"experiments.{name}"
            if "." in name or "@" in name:
                raise ValueError(f"{where}: experiment names may not contain '.' or '@'")
            if exp.backbone not in BACKBONES:
                raise ValueError(f"{where}.backbone: unknown backbone {exp.backbone!r}; known: {sorted(BACKBONES)}")
            if exp.dataset not in self.datasets:
                raise ValueError(f"{where}.dataset: unknown dataset {exp.dataset!r}; defined: {sorted(self.datasets)}")
            tasks = DATASET_TASKS[self.datasets[exp.dataset].kind]
            if exp.task not in tasks:
                raise ValueError(f"{where}.task: unknown task {exp.task!r} for {exp.dataset}; known: {list(tasks)}")
        return self


def project_root(start: str | Path | None = None) -> Path:
    """The directory holding params.yaml and dvc.yaml, searched upward (notebooks run in notebooks/)."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").exists() and (candidate / "dvc.yaml").exists():
            return candidate
    raise FileNotFoundError(f"no params.yaml + dvc.yaml in {here} or any parent directory")


def _format(error: ValidationError, source: str) -> str:
    lines = [f"invalid {source}:"]
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"] if p != "lambda_") or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in ("value_error", "missing") and not isinstance(e["input"], dict) else ""))
    return "\n".join(lines)


def validate(raw: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format(error, source)) from None


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path) if path else project_root() / "params.yaml"
    return validate(yaml.safe_load(path.read_text()) or {}, str(path))


class ResolvedExperiment(BaseModel):
    """One experiment with the shared train/profile settings merged in: what a stage needs."""
    name: str
    backbone: str
    checkpoint: Optional[str]
    dataset: str
    dataset_params: SoundfontNotes
    task: str
    method: str
    sparsity: Optional[Sparsity]
    train: Train
    profile: Profile


def experiment(name: str, params: Params | None = None) -> ResolvedExperiment:
    params = params or load_params()
    if name not in params.experiments:
        raise ParamsError(f"unknown experiment {name!r}; defined: {sorted(params.experiments)}")
    exp = params.experiments[name]
    overrides = exp.train.model_dump(exclude_none=True)
    return ResolvedExperiment(
        name=name, backbone=exp.backbone, checkpoint=exp.checkpoint, dataset=exp.dataset,
        dataset_params=params.datasets[exp.dataset], task=exp.task, method=exp.method,
        sparsity=exp.sparsity, train=params.train.model_copy(update=overrides), profile=params.profile)

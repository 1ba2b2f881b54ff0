"""params.yaml: schema, validation and the resolved view of one experiment.

Every stage validates the whole file when it starts, so a typo stops the pipeline at once
with a message naming the key and the allowed values, not an hour later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPARSITY_LOSSES = ("paper", "authors_code")
METHODS = ("base", "kwyn")
TASK_TYPES = ("classification", "tagging", "asr")  # kwyn.metrics.TASK_TYPES trains and scores each


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


class _Preparation(_Strict):
    """Keys every dataset kind shares: how clips are decoded, resampled and cropped (kwyn.data.prepare)."""
    TASKS: ClassVar[dict[str, str]] = {}  # task name -> task type (one of TASK_TYPES)
    sample_rate: int = Field(16000, gt=0)
    clip_seconds: float = Field(1.0, gt=0)
    offset_seconds: float = Field(0.0, ge=0)
    on_bad_audio: Literal["error", "skip"] = "error"
    workers: int = Field(2, ge=1)


class SoundfontNotes(_Preparation):
    """NSynth-like notes rendered from the General MIDI soundfont shipped with pretty_midi."""
    TASKS: ClassVar[dict[str, str]] = {"pitch": "classification", "instrument_family": "classification"}
    kind: Literal["soundfont_notes"]
    seed: int = 0
    note_seconds: float = Field(1.0, gt=0)
    pitches: tuple[int, int] = (48, 84)
    velocities: list[int] = [100]
    families: Optional[list[str]] = None  # NSynth family names to render; None: every family
    split_per_family: tuple[int, int, int] = (6, 1, 1)
    clip_seconds: float = Field(0.064, gt=0)
    offset_seconds: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _ranges(self):
        from kwyn.data.nsynth import NSYNTH_FAMILIES

        unknown = sorted(set(self.families or ()) - set(NSYNTH_FAMILIES))
        if unknown:
            raise ValueError(f"families: unknown {unknown}; known: {NSYNTH_FAMILIES}")
        if not 0 <= self.pitches[0] <= self.pitches[1] <= 127:
            raise ValueError(f"pitches must be [low, high] MIDI notes within 0..127, got {list(self.pitches)}")
        return self


class SpokenCommands(_Preparation):
    """Speech Commands-like words rendered offline with espeak-ng (kwyn.data.spoken_commands), split by voice.
    Rendered as 1 s clips (Speech Commands' length); clip_seconds/offset_seconds then crop them."""
    TASKS: ClassVar[dict[str, str]] = {"word": "classification"}
    kind: Literal["spoken_commands"]
    seed: int = 0
    words: list[str] = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    voices: Optional[list[str]] = None  # espeak-ng voices ("en-us+f3"); None: the module's 12 default voices
    rates: list[int] = [140, 170, 200]
    pitches: list[int] = [35, 50, 65]
    noise_db: list[float] = [-30, -20]
    split_per_voice: Optional[tuple[int, int, int]] = None  # voices for train/valid/test; None: about 4:1:1

    @field_validator("words", mode="before")
    @classmethod
    def _yaml_booleans(cls, words):
        if isinstance(words, list) and any(isinstance(w, bool) for w in words):
            raise ValueError("quote the words 'yes', 'no', 'on' and 'off': unquoted, YAML reads them as true/false")
        return words


class _Benchmark(_Preparation):
    """One of the paper's benchmarks, read by kwyn.data.benchmarks from `root` with its official split.
    download: true fetches it first (kwyn.data.download) into `root`, or data/<dataset>/raw without one.
    Keys a kind adds beyond these (fold, pitches, top) go to its loader."""
    root: Optional[str] = None  # relative paths are relative to the project root
    download: bool = False

    @model_validator(mode="after")
    def _where(self):
        if self.download and self.kind == "fluent_speech_commands":
            raise ValueError("download: Fluent Speech Commands is licensed per user and cannot be downloaded; "
                             "request it, unpack it and give its folder as 'root'")
        if self.root is None and not self.download:
            raise ValueError(f"root: required for kind {self.kind!r} (the folder holding the dataset), "
                             "unless download: true")
        return self

    def loader_args(self) -> dict:
        return self.model_dump(exclude={"kind", *_Benchmark.model_fields})


class Esc50(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"category": "classification"}
    kind: Literal["esc50"]
    fold: int = Field(1, ge=1, le=5)  # the test fold; valid = the next one


class UrbanSound8k(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"class": "classification"}
    kind: Literal["urbansound8k"]
    fold: int = Field(1, ge=1, le=10)


class Fsd50k(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"labels": "tagging"}
    kind: Literal["fsd50k"]


class Gtzan(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"genre": "classification"}
    kind: Literal["gtzan"]


class MagnaTagATune(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"tags": "tagging"}
    kind: Literal["magnatagatune"]
    top: int = Field(50, ge=1, le=188)  # the most frequent tags kept


class NSynth(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"pitch": "classification"}
    kind: Literal["nsynth"]
    pitches: tuple[int, int] = (9, 120)


class SpeechCommandsV2(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"word": "classification"}
    kind: Literal["speech_commands"]


class FluentSpeechCommands(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"intent": "classification"}
    kind: Literal["fluent_speech_commands"]


class LibriSpeech(_Benchmark):
    TASKS: ClassVar[dict[str, str]] = {"transcript": "asr"}
    kind: Literal["librispeech"]


class Custom(_Preparation):
    """Bring your own data (kwyn.data.custom): `path` is a folder root/<split>/<class>/<file> (task label)
    or a CSV with path, split and label (task label) or labels (";"-separated: task labels, tagging)
    or transcript (task transcript, ASR)."""
    TASKS: ClassVar[dict[str, str]] = {"label": "classification", "labels": "tagging", "transcript": "asr"}
    kind: Literal["custom"]
    path: str  # relative paths are relative to the project root


DATASET_KINDS = {cls.model_fields["kind"].annotation.__args__[0]: cls for cls in (
    SoundfontNotes, SpokenCommands, Esc50, UrbanSound8k, Fsd50k, Gtzan, MagnaTagATune, NSynth, SpeechCommandsV2,
    FluentSpeechCommands, LibriSpeech, Custom)}
Dataset = Annotated[Union[tuple(DATASET_KINDS.values())], Field(discriminator="kind")]
DATASET_TASKS = {kind: tuple(cls.TASKS) for kind, cls in DATASET_KINDS.items()}


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
    datasets: dict[str, Dataset]
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
            dataset = self.datasets[exp.dataset]
            if exp.task not in dataset.TASKS:
                raise ValueError(f"{where}.task: unknown task {exp.task!r} for {exp.dataset}; known: "
                                 f"{list(dataset.TASKS)}")
            if dataset.TASKS[exp.task] == "asr":
                from kwyn.backbones import family_class

                if not family_class(BACKBONES[exp.backbone][0]).has_sequence():
                    raise ValueError(f"{where}.backbone: {exp.backbone!r} gives no frame sequence (it pools time away), "
                                     f"so it cannot serve the ASR task {exp.task!r} of {exp.dataset}; use a backbone "
                                     f"with frames (wav2vec2/HuBERT/WavLM, Whisper encoder, MusicFM, CREPE)")
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
        loc = [p for p in e["loc"] if p != "lambda_"]
        if len(loc) > 2 and loc[0] == "datasets" and loc[2] in DATASET_KINDS:
            del loc[2]  # the discriminated union's tag: datasets.<name>.<kind>.key -> datasets.<name>.key
        where = ".".join(str(p) for p in loc) or "(top level)"
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
    dataset_params: Dataset
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

"""params.yaml: schema, validation and the resolved view of one experiment.

Every stage validates the whole file when it starts, so a typo stops the pipeline at once
with a message naming the key and the allowed values, not an hour later.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

SPARSITY_LOSSES = ("paper", "authors_code")
LOTTERY_SCORES = ("magnitude", "activation", "gradient")
PRECISIONS = ("fp32", "bf16", "fp16")
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

    def refusal(self, task: str) -> Optional[str]:
        """Why this dataset, as configured, cannot serve `task` (one of TASKS); None when it can."""
        return None


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
    """Speech Commands-like words rendered offline with espeak-ng (kwyn.data.spoken_commands).
    Rendered as 1 s clips (Speech Commands' length); clip_seconds/offset_seconds then crop them.
    split_by voice: test voices are unseen in training, as Speech Commands' speakers; utterance: every
    voice in every split (each voice's clips shared out), which the speaker task (which voice?) needs."""
    TASKS: ClassVar[dict[str, str]] = {"word": "classification", "speaker": "classification"}
    kind: Literal["spoken_commands"]
    seed: int = 0
    words: list[str] = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    voices: Optional[list[str]] = None  # espeak-ng voices ("en-us+f3"); None: the module's 12 default voices
    rates: list[int] = [140, 170, 200]
    pitches: list[int] = [35, 50, 65]
    noise_db: list[float] = [-30, -20]
    split_by: Literal["voice", "utterance"] = "voice"
    split_per_voice: Optional[tuple[int, int, int]] = None  # voice split: voices for train/valid/test; None: ~4:1:1
    # utterance split: shares of each voice's clips for train/valid/test; None: 0.6, 0.2, 0.2
    split_per_utterance: Optional[tuple[float, float, float]] = None

    @field_validator("words", mode="before")
    @classmethod
    def _yaml_booleans(cls, words):
        if isinstance(words, list) and any(isinstance(w, bool) for w in words):
            raise ValueError("a word is a boolean (true/false, or yes/no/on/off read by a YAML 1.1 reader): quote it")
        return words

    @model_validator(mode="after")
    def _split_keys(self):
        from kwyn.data.spoken_commands import check_split

        check_split(self.split_by, self.split_per_voice, self.split_per_utterance)
        return self

    def refusal(self, task: str) -> Optional[str]:
        if task == "speaker" and self.split_by == "voice":
            return ("speaker needs split_by: utterance: with the voice split the test voices are never seen in "
                    "training")
        return None


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
    """Bring your own data (kwyn.data.custom): `path` is a folder root/<split>/<class>/<file> or
    root/<class>/<file> (task label), a folder with an audiofolder metadata.csv, or a CSV with path (or
    file_name), an optional split and label (task label) or labels (";"-separated: task labels, tagging)
    or transcript/transcription (task transcript, ASR). Data without a split (no split folders, no split
    column) is split by split_shares (train, valid, test) with split_seed: per class for labels, by row
    for transcripts and multi-label rows; both keys are ignored when the data brings its split."""
    TASKS: ClassVar[dict[str, str]] = {"label": "classification", "labels": "tagging", "transcript": "asr"}
    kind: Literal["custom"]
    path: str  # relative paths are relative to the project root
    split_shares: tuple[float, float, float] = (0.8, 0.1, 0.1)  # = kwyn.data.custom.SPLIT_SHARES (tested)
    split_seed: int = 0

    @field_validator("split_shares")
    @classmethod
    def _shares(cls, shares):
        from kwyn.data.custom import check_shares

        return check_shares(shares)


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
    # encoder training (scratch, lottery, convexity fine-tuning): linear warm-up over this share of the steps
    encoder_lr: float = Field(1e-4, gt=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    device: str = "auto"  # auto (the GPU of this torchrun rank, a free GPU, else cpu) | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 only on cuda


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
    encoder_lr: Optional[float] = Field(None, gt=0)
    warmup: Optional[float] = Field(None, ge=0, lt=1)
    device: Optional[str] = None
    precision: Optional[Literal["fp32", "bf16", "fp16"]] = None


class Sparsity(_Strict):
    loss: Literal["paper", "authors_code"] = "paper"
    t: float = Field(0.5, ge=0, le=1)
    lambda_: float = Field(1.0, ge=0, alias="lambda")
    # ratio control (kwyn.masks.RatioControl): the rounding threshold is moved so that this share of the
    # encoder's parameters is removed, reached linearly over the first `ratio_ramp` share of the steps
    ratio: Optional[float] = Field(None, gt=0, lt=1)
    ratio_ramp: float = Field(0.5, gt=0, le=1)
    # ratio control keeps a multiple of this many units at every conv and FFN site (heads are whole already):
    # CPU kernels run faster on such widths (README "Benchmarks"); 1 = any width, the paper's
    multiple_of: int = Field(1, ge=1)


class Recipe(_Strict):
    """Mask training that converges in a CPU budget (kwyn only; without this block, the paper's loop).

    A run has three phases: head warm-up (head_warmup steps) | masks and head for train.steps (the ratio
    ramp first) | re-fit (refit steps). Both ends are cheap and come on top of train.steps: the warm-up
    reads cached embeddings, the re-fit runs the encoder forward only (kwyn.recipe.Schedule).
    """
    # head-only steps on the full encoder's embeddings (cached per clip) before the mask training: the masks
    # then start under a head that already solves the task, instead of a random one; nearly free per step
    head_warmup: int = Field(0, ge=0)
    # weight of a distillation loss: squared error between the masked and the frozen full encoder's
    # embeddings (the full one cached per clip), over the latter's mean variance. It rewards keeping
    # the representation the head was warmed up on, a dense signal the task loss alone does not give
    distill: float = Field(0.0, ge=0)
    # distil the encoder's frame sequence (batch, frames, dim) frame by frame instead of its time average: a
    # pooled target lets the frames' errors cancel, so the masks may drop what the full encoder says at each
    # moment as long as the average survives. Needs distill > 0 and a backbone with a frame sequence; the
    # teacher cache then holds frames x dim floats per clip (Whisper tiny, 1 s: 50 x 384)
    distill_frames: bool = False
    # head-only steps after the mask training, the masks frozen: the head re-fits to what they keep instead
    # of chasing a moving encoder, and these steps need no backward through it
    refit: int = Field(0, ge=0)
    # the re-fit on cached embeddings: when it starts, the trimmed encoder embeds the whole training split and the
    # validation clips once (a forward of the trimmed model per clip), and each re-fit step is a lookup and a head
    # step. The head then fits what the masks keep to convergence; refit steps of train.batch_size clips left it
    # far from it at 75 % removed (README "Convergence in a CPU budget")
    refit_cache: bool = False
    # the cached re-fits (ramp_refit, refit with refit_cache) read the embeddings standardised by the training
    # split's mean and spread per dimension; the head's first layer is folded back to read the raw embedding
    # after the ramp re-fit and whenever it is saved (kwyn.recipe.Standardized):
    # a trimmed encoder's embedding has offsets far larger than its spread, on which Adam's few hundred head steps
    # stay far from the optimum (at 75 % removed on Whisper words, validation 0.79-0.96 against 0.98 standardised)
    refit_standardize: bool = False
    # clips per re-fit step (default: train.batch_size); with refit_cache a larger batch costs next to nothing
    refit_batch_size: Optional[int] = Field(None, ge=1)
    # head-only steps, on the trimmed encoder's cached embeddings of the training split, at the step where the
    # ratio ramp reaches sparsity.ratio; then the masks train on. The head otherwise meets the last units' removal
    # unprepared, and validation collapses where the ramp ends (to 0.1-0.4 at 75 % removed) before it recovers
    ramp_refit: int = Field(0, ge=0)
    # where the mask logits start: "constant" (train.mask_init for every unit, the paper's) or "importance":
    # mask_init plus the standardised log of each unit's squared task-loss gradient (summed over
    # `init_batches` batches, after the warm-up) per parameter it costs, so the ratio ramp removes the
    # units that matter least for their price first instead of an arbitrary order
    init: Literal["constant", "importance"] = "constant"
    init_batches: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _options_need_what_they_shape(self):
        if self.distill_frames and not self.distill:
            raise ValueError("recipe distill_frames shapes the distillation: set recipe.distill > 0")
        if self.refit == 0 and self.ramp_refit == 0 and self.refit_batch_size is not None:
            raise ValueError("recipe refit_batch_size sizes the re-fit: set recipe.refit or recipe.ramp_refit > 0")
        if self.refit == 0 and self.refit_cache:
            raise ValueError("recipe refit_cache shapes the re-fit: set recipe.refit > 0")
        if self.refit_standardize and (self.refit and not self.refit_cache or not (self.refit or self.ramp_refit)):
            raise ValueError("recipe refit_standardize standardises the cached re-fits' embeddings: set "
                             "recipe.ramp_refit > 0 or recipe.refit > 0 with recipe.refit_cache: true")
        return self


class HardConcrete(_Strict):
    """DPHuBERT's HardConcrete unit masks with a Lagrangian on the expected size (kwyn.hardconcrete)."""
    ratio: float = Field(gt=0, lt=1)  # the share of encoder parameters to remove (expected, then rounded per site)
    ratio_ramp: float = Field(0.5, gt=0, le=1)  # the target ramps from 0 over this share of the steps (DPHuBERT's warm-up)
    # lr of the gates' log_alpha and (ascending) of the Lagrange multipliers: DPHuBERT's 0.02 is for 20k+ steps;
    # a few hundred need a larger one to move log_alpha from its start (4.6) past the keep/drop point (-1.6)
    lr: float = Field(0.1, gt=0)
    init_drop: float = Field(0.01, gt=0, lt=1)  # every gate starts with this probability of being 0 (DPHuBERT's)
    beta: float = Field(2 / 3, gt=0)  # temperature of the concrete distribution (Louizos et al.)
    # each conv and FFN site keeps a multiple of this many units (its expected count rounded down), as
    # sparsity.multiple_of does for kwyn: CPU kernels are faster on such widths
    multiple_of: int = Field(1, ge=1)


class Lottery(_Strict):
    """Structured lottery-ticket trimming (Esling et al. 2020), kwyn.lottery."""
    rounds: int = Field(3, ge=1)
    share: float = Field(0.2, gt=0, lt=1)  # of the units still present, removed per round
    score: Literal["magnitude", "activation", "gradient"] = "magnitude"
    rewind_step: int = Field(0, ge=0)  # weights rewound to this step of round 0, the dense fine-tuning (0: pretrained)
    steps: Optional[int] = Field(None, ge=1)  # training steps per round; None: train.steps
    score_batches: int = Field(4, ge=1)  # batches for the activation and gradient scores
    # each conv and FFN site keeps a multiple of this many units after a round (its lowest-scored go), as
    # sparsity.multiple_of does for kwyn: CPU kernels are faster on such widths
    multiple_of: int = Field(1, ge=1)


class Convexity(_Strict):
    """Convexity-based layer pruning (Dorszewski et al. 2024), kwyn.convexity."""
    k: int = Field(10, ge=1)  # neighbours of the kNN graph
    pairs_per_class: int = Field(100, ge=1)
    examples: int = Field(256, ge=4)  # training examples embedded to score the layers
    layers: Optional[int] = Field(None, ge=1)  # keep this many layers instead of the most convex one
    # keep the earliest layer scoring within `tolerance` of the best (0: the most convex one, as the paper)
    tolerance: float = Field(0.0, ge=0, le=1)
    finetune: bool = False  # also train the kept encoder layers (encoder_lr), not only the head


class Profile(_Strict):
    input_seconds: float = Field(0.064, gt=0)
    batch: int = Field(1, ge=1)
    repeats: int = Field(30, ge=1)
    warmup: int = Field(5, ge=0)
    threads: int = Field(1, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    # test clips that also go through the masked model, to check that trimming changed no output (None: every
    # test clip). The masked model costs the full encoder: on CREPE it was most of a trim stage's time
    masked_check_clips: Optional[int] = Field(None, ge=1)


class ProfileOverrides(_Strict):
    input_seconds: Optional[float] = Field(None, gt=0)
    batch: Optional[int] = Field(None, ge=1)
    repeats: Optional[int] = Field(None, ge=1)
    warmup: Optional[int] = Field(None, ge=0)
    threads: Optional[int] = Field(None, ge=1)
    eval_batch_size: Optional[int] = Field(None, ge=1)
    masked_check_clips: Optional[int] = Field(None, ge=1)


class Experiment(_Strict):
    backbone: str
    checkpoint: Optional[str] = None
    dataset: str
    task: str
    method: str  # a registered method of kwyn.methods (scratch: in the `scratch:` section)
    sparsity: Optional[Sparsity] = None
    recipe: Optional[Recipe] = None  # kwyn: head warm-up, distillation, re-fit (None: the paper's loop)
    lottery: Optional[Lottery] = None
    convexity: Optional[Convexity] = None
    hardconcrete: Optional[HardConcrete] = None
    train: TrainOverrides = TrainOverrides()
    profile: ProfileOverrides = ProfileOverrides()  # e.g. the input length a backbone is timed at

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        from kwyn.methods import METHODS

        known = [name for name, m in METHODS.items() if m.in_experiments]
        if method not in known:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(known)} (scratch: in the `scratch:` "
                             "section)")
        return method

    @model_validator(mode="after")
    def _method_blocks(self):
        from kwyn.methods import METHODS, require_absent

        method = METHODS[self.method]
        require_absent(self, method)
        method.check(self)  # its own blocks: required, or completed with their defaults
        return self


class Scratch(_Strict):
    """The architecture a `kwyn` experiment found, re-initialised and trained with the encoder unfrozen."""
    from_: str = Field(alias="from")  # the kwyn experiment whose kept units define the architecture
    train: TrainOverrides = TrainOverrides()




def _grid_method(method: str) -> str:
    from kwyn.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return method


GridMethod = Annotated[str, AfterValidator(_grid_method)]  # any registered method, scratch included


class GridSpec(_Strict):
    """A compact experiment grid (`grids:` in params.yaml), expanded by kwyn.grid into the active
    sections: backbones x (dataset, task) x methods x ratios. `python -m kwyn.grid use NAME` writes
    its expansion into `datasets`, `experiments`, `scratch` and the `train` keys it gives."""
    description: str = ""
    datasets: dict[str, Dataset]  # the grid's datasets, full definitions (the schema of top-level `datasets`)
    tasks: dict[str, list[tuple[str, str]]]  # backbone -> [[dataset, task], ...]
    methods: list[GridMethod]
    methods_for: dict[str, list[GridMethod]] = {}  # backbone -> its own method list, replacing `methods`
    ratios: list[Annotated[float, Field(gt=0, lt=1)]] = []  # kwyn (sparsity.ratio) and scratch: one each
    name_by: Literal["dataset", "task"] = "dataset"  # <short backbone>_<dataset or task>_<method>[_<pct>]
    sparsity: Sparsity = Sparsity()  # kwyn's block; `ratio` filled per experiment from `ratios`
    # named kwyn recipes (kwyn.recipe): each gives <prefix>_kwyn_<name>_<pct> beside the paper's
    # <prefix>_kwyn_<pct> at every ratio, with its own `train` keys from recipe_train
    recipes: dict[str, Recipe] = {}
    recipes_for: dict[str, list[str]] = {}  # backbone -> the recipes its kwyn experiments get, instead of all of them
    recipe_train: dict[str, TrainOverrides] = {}  # recipe name -> `train` of its experiments, over method_train
    recipe_sparsity: dict[str, Sparsity] = {}  # recipe name -> `sparsity` keys of its experiments, over `sparsity`
    # every experiment and scratch entry once per seed (train.seed); the first keeps the plain name, the others
    # get _seed<k>. Tables and figures show the mean over seeds and their spread (kwyn.report.seed_means)
    seeds: list[int] = Field([0], min_length=1)
    # a method's (or a recipe's: kwyn with that recipe) own seeds instead of `seeds`; "kwyn" = the paper's loop
    seeds_for: dict[str, list[int]] = {}
    lottery: Optional[Lottery] = None  # the lottery experiments' block (None: Lottery's defaults)
    convexity: Optional[Convexity] = None  # the convexity experiments' block (None: Convexity's defaults)
    # the hardconcrete experiments' block, `ratio` left out: each gets one of `ratios`
    hardconcrete: Optional[dict] = None
    train: TrainOverrides = TrainOverrides()  # replaces these keys of the top-level `train`
    experiment_train: dict[str, TrainOverrides] = {}  # backbone -> `train` of its experiments (not scratch)
    method_train: dict[str, TrainOverrides] = {}  # method -> `train` of its experiments, over experiment_train
    scratch_train: TrainOverrides = TrainOverrides()  # `train` of every scratch entry
    backbone_scratch_train: dict[str, TrainOverrides] = {}  # backbone -> scratch `train`, over scratch_train
    profile: dict[str, ProfileOverrides] = {}  # backbone -> `profile` of its experiments
    extra_experiments: dict[str, Experiment] = {}  # copied as they are, after their backbone's experiments
    _raw: dict = PrivateAttr(default_factory=dict)  # the mapping as written (datasets and extras are copied from it)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data, handler):
        spec = handler(data)
        if isinstance(data, dict):
            import copy

            spec._raw = copy.deepcopy(data)
        return spec

    def methods_of(self, backbone: str) -> list[str]:
        return list(self.methods_for.get(backbone, self.methods))

    @model_validator(mode="after")
    def _consistent(self):
        from kwyn.backbones import BACKBONES

        if self.sparsity.ratio is not None:
            raise ValueError("sparsity.ratio: leave it out; each kwyn experiment gets one of `ratios`")
        for backbone, pairs in self.tasks.items():
            if backbone not in BACKBONES:
                raise ValueError(f"tasks.{backbone}: unknown backbone; known: {sorted(BACKBONES)}")
            for i, (dataset, task) in enumerate(pairs):
                if dataset not in self.datasets:
                    raise ValueError(f"tasks.{backbone}[{i}]: unknown dataset {dataset!r}; the grid's datasets: "
                                     f"{sorted(self.datasets)}")
                known = list(self.datasets[dataset].TASKS)
                if task not in known:
                    raise ValueError(f"tasks.{backbone}[{i}]: unknown task {task!r} for {dataset} "
                                     f"({self.datasets[dataset].kind}); known: {known}")
                if reason := self.datasets[dataset].refusal(task):
                    raise ValueError(f"tasks.{backbone}[{i}]: task {task!r} of dataset {dataset}: {reason}")
        for key in ("methods_for", "recipes_for", "experiment_train", "backbone_scratch_train", "profile"):
            stray = sorted(set(getattr(self, key)) - set(self.tasks))
            if stray:
                raise ValueError(f"{key}: backbone(s) {stray} have no `tasks` in this grid; its backbones: "
                                 f"{sorted(self.tasks)}")
        from kwyn.methods import METHODS

        stray = sorted(set(self.method_train) - set(METHODS))
        if stray:
            raise ValueError(f"method_train: unknown method(s) {stray}; known: {list(METHODS)}")
        if "scratch" in self.method_train:
            raise ValueError("method_train.scratch: give scratch settings as `scratch_train`")
        for key in ("recipe_train", "recipe_sparsity"):
            stray = sorted(set(getattr(self, key)) - set(self.recipes))
            if stray:
                raise ValueError(f"{key}: unknown recipe(s) {stray}; the grid's recipes: {sorted(self.recipes)}")
        if any(block.ratio is not None for block in self.recipe_sparsity.values()):
            raise ValueError("recipe_sparsity: leave `ratio` out; each kwyn experiment gets one of `ratios`")
        for backbone, names in self.recipes_for.items():
            stray = sorted(set(names) - set(self.recipes))
            if stray:
                raise ValueError(f"recipes_for.{backbone}: unknown recipe(s) {stray}; the grid's recipes: "
                                 f"{sorted(self.recipes)}")
        bad = [name for name in self.recipes if not name.isidentifier() or name.isdigit()]
        if bad:
            raise ValueError(f"recipes: names {bad} must be words (they go into experiment names)")
        for where, seeds in [("seeds", self.seeds), *((f"seeds_for.{k}", v) for k, v in self.seeds_for.items())]:
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"{where}: {seeds} must list distinct seeds, at least one")
        stray = sorted(set(self.seeds_for) - set(METHODS) - set(self.recipes))
        if stray:
            raise ValueError(f"seeds_for: {stray} are neither methods nor recipes of the grid")
        for backbone in self.tasks:
            methods = self.methods_of(backbone)
            if "scratch" in methods and ("kwyn" not in methods or not self.ratios):
                raise ValueError(f"methods of {backbone}: scratch needs kwyn and `ratios` (one scratch entry "
                                 "per kwyn ratio)")
        listed = {m for b in self.tasks for m in self.methods_of(b)}
        for block in (name for name, m in METHODS.items() if name in m.blocks):  # a method's own block
            if getattr(self, block) is not None and block not in listed:
                raise ValueError(f"{block}: a block for method {block!r}, which no backbone of the grid lists")
        if self.hardconcrete is not None:
            if "ratio" in self.hardconcrete:
                raise ValueError("hardconcrete.ratio: leave it out; each hardconcrete experiment gets one of `ratios`")
            HardConcrete(ratio=0.5, **self.hardconcrete)  # its keys and values, named as an experiment's would be
        if "hardconcrete" in listed and not self.ratios:
            raise ValueError("methods: hardconcrete needs `ratios` (one experiment per ratio)")
        for name, exp in self.extra_experiments.items():
            where = f"extra_experiments.{name}"
            if exp.dataset not in self.datasets:
                raise ValueError(f"{where}.dataset: unknown dataset {exp.dataset!r}; the grid's datasets: "
                                 f"{sorted(self.datasets)}")
            if exp.task not in self.datasets[exp.dataset].TASKS:
                raise ValueError(f"{where}.task: unknown task {exp.task!r} for {exp.dataset}; known: "
                                 f"{list(self.datasets[exp.dataset].TASKS)}")
            if reason := self.datasets[exp.dataset].refusal(exp.task):
                raise ValueError(f"{where}.task: task {exp.task!r} of dataset {exp.dataset}: {reason}")
        return self


SEEDS = (0, 1, 2)  # the train.seed of each run of a `three_seeds` entry


def seed_runs(name: str) -> list[str]:
    """The runs of `three_seeds.<name>`: the first keeps the plain name (as a grid's first seed does)."""
    return [name, *(f"{name}_seed{seed}" for seed in SEEDS[1:])]


class Params(_Strict):
    datasets: dict[str, Dataset]
    train: Train = Train()
    profile: Profile = Profile()
    experiments: dict[str, Experiment]
    # experiments run with train.seed 0, 1 and 2 (runs <name>, <name>_seed1, <name>_seed2, each with its own
    # runs/, models/ and metrics/ files), trained in one stage and trimmed in one: one notebook kernel and one
    # DVC stage for the three instead of three of each (README "Wall time")
    three_seeds: dict[str, Experiment] = {}
    scratch: dict[str, Scratch] = {}
    grids: dict[str, GridSpec] = {}  # compact grids, switched to by `python -m kwyn.grid use NAME`

    def run_entries(self) -> dict[str, tuple[Experiment, Optional[int]]]:
        """Every run of `three_seeds` and `experiments`, in that order: name -> (its entry, the train.seed it
        sets over the entry's, None for none)."""
        runs: dict = {}
        for name, exp in self.three_seeds.items():
            runs.update({run: (exp, seed or None) for run, seed in zip(seed_runs(name), SEEDS)})
        runs.update({name: (exp, None) for name, exp in self.experiments.items()})
        return runs

    @model_validator(mode="after")
    def _references(self):
        from kwyn.backbones import BACKBONES

        runs = self.run_entries()
        for name, entry in self.scratch.items():
            where = f"scratch.{name}"
            if "." in name or "@" in name:
                raise ValueError(f"{where}: names may not contain '.' or '@'")
            if name in runs:
                raise ValueError(f"{where}: the name is already an experiment; names must be unique")
            source = runs.get(entry.from_)
            if source is None or source[0].method != "kwyn":
                kwyn = sorted(k for k, (e, _) in runs.items() if e.method == "kwyn")
                raise ValueError(f"{where}.from: {entry.from_!r} is not a kwyn experiment; kwyn experiments: {kwyn}")
        for name, exp in self.three_seeds.items():
            where = f"three_seeds.{name}"
            if exp.train.seed is not None:
                raise ValueError(f"{where}.train.seed: leave it out; its runs have train.seed {', '.join(map(str, SEEDS))}")
            if self.train.seed != SEEDS[0]:
                raise ValueError(f"train.seed {self.train.seed}: the first run of each `three_seeds` entry takes the "
                                 f"top-level train.seed, which must be {SEEDS[0]} (or move the entries to `experiments`)")
            for run in seed_runs(name)[1:]:
                if run in self.experiments:
                    raise ValueError(f"{where}: its run {run!r} is already an experiment; names must be unique")
            if name in self.experiments:
                raise ValueError(f"{where}: the name is already an experiment; names must be unique")
        for where, name, exp in [*((f"experiments.{k}", k, e) for k, e in self.experiments.items()),
                                 *((f"three_seeds.{k}", k, e) for k, e in self.three_seeds.items())]:
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
            if reason := dataset.refusal(exp.task):
                raise ValueError(f"{where}.task: task {exp.task!r} of dataset {exp.dataset}: {reason}")
            if exp.sparsity is not None and exp.sparsity.ratio is not None:
                select_after = exp.train.select_after if exp.train.select_after is not None else self.train.select_after
                if select_after < exp.sparsity.ratio_ramp:
                    raise ValueError(f"{where}: train.select_after {select_after:g} is before the end of the ratio ramp "
                                     f"(sparsity.ratio_ramp {exp.sparsity.ratio_ramp:g}): a checkpoint that removes less "
                                     f"than sparsity.ratio could be selected; set train.select_after to at least "
                                     f"{exp.sparsity.ratio_ramp:g}")
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


def read_yaml(text: str):
    """params.yaml as DVC reads it: YAML 1.2 (ruamel), where yes/no/on/off are strings.

    `dvc exp run -S` rewrites params.yaml with ruamel and drops the quotes of 'yes' and 'no'; a
    YAML 1.1 reader (PyYAML) would then read them as booleans and disagree with DVC.
    """
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path) if path else project_root() / "params.yaml"
    # a copy: what a caller does to its Params (or validation to the dict) must not reach the next one
    return validate(copy.deepcopy(_parsed_yaml(path.read_text())), str(path))


@functools.lru_cache(maxsize=4)
def _parsed_yaml(text: str):
    """read_yaml, once per text: pure-Python YAML takes a tenth of a second for the grid's params.yaml
    (benchmarks/stage_overheads.py, params_parse_s), and a stage notebook loads it three or four times.
    Keyed by the text itself, so an edited file is read anew."""
    return read_yaml(text) or {}


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
    recipe: Optional[Recipe] = None
    lottery: Optional[Lottery] = None
    convexity: Optional[Convexity] = None
    hardconcrete: Optional[HardConcrete] = None
    source: Optional[str] = None  # scratch: the kwyn experiment whose architecture is trained
    train: Train
    profile: Profile

    @property
    def target_ratio(self) -> Optional[float]:
        from kwyn.methods import METHODS

        return METHODS[self.method].target_ratio(self)


def experiment_names(params: Params | None = None) -> list[str]:
    """Every run of the grid (`three_seeds` expanded, then `experiments`), scratch entries after the experiments
    they come from."""
    params = params or load_params()
    return [*params.run_entries(), *params.scratch]


def stage_runs(name: str, params: Params | None = None) -> list[str]:
    """The runs one train or trim stage runs: the three of a `three_seeds` entry, else the experiment itself."""
    params = params or load_params()
    if name in params.three_seeds:
        return seed_runs(name)
    experiment(name, params)  # an unknown name raises, naming the defined ones
    return [name]


def experiment(name: str, params: Params | None = None) -> ResolvedExperiment:
    params = params or load_params()
    if name in params.scratch:
        entry = params.scratch[name]
        source = experiment(entry.from_, params)
        train = params.train.model_copy(update=entry.train.model_dump(exclude_none=True))
        return source.model_copy(update={"name": name, "method": "scratch", "source": entry.from_, "train": train,
                                         "recipe": None})
    runs = params.run_entries()
    if name not in runs:
        raise ParamsError(f"unknown experiment {name!r}; defined: {sorted(experiment_names(params))}")
    exp, seed = runs[name]
    overrides = exp.train.model_dump(exclude_none=True) | ({"seed": seed} if seed is not None else {})
    return ResolvedExperiment(
        name=name, backbone=exp.backbone, checkpoint=exp.checkpoint, dataset=exp.dataset,
        dataset_params=params.datasets[exp.dataset], task=exp.task, method=exp.method,
        sparsity=exp.sparsity, recipe=exp.recipe, lottery=exp.lottery, convexity=exp.convexity,
        hardconcrete=exp.hardconcrete,
        train=params.train.model_copy(update=overrides),
        profile=params.profile.model_copy(update=exp.profile.model_dump(exclude_none=True)))

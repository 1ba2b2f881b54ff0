"""params.yaml validation: every mistake stops with the key and the allowed values named."""
import copy
from pathlib import Path

import pytest
import yaml

from kwyn.params import ParamsError, experiment, load_params, validate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def broken(edit):
    raw = copy.deepcopy(DEFAULT)
    edit(raw)
    return raw


def first_kwyn(raw):
    return next(e for e in [*raw["three_seeds"].values(), *raw["experiments"].values()] if e["method"] == "kwyn")


def with_dataset(dataset: dict, task: str | None = None):
    """An edit adding datasets.d (and, given a task, pointing the first kwyn experiment at it)."""
    def edit(raw):
        raw["datasets"]["d"] = dataset
        if task is not None:
            first_kwyn(raw).update(dataset="d", task=task)
    return edit


def test_the_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.experiments and all(e.dataset in params.datasets for e in params.experiments.values())


def test_loading_again_sees_every_edit_and_no_callers_changes(tmp_path):
    """load_params parses a text once (kwyn.params._parsed_yaml); each call still gets its own Params."""
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    first = load_params(path)
    first.train.steps = 12345
    first.experiments.clear()
    again = load_params(path)
    assert again.train.steps == DEFAULT["train"]["steps"] and again.experiments
    path.write_text(path.read_text().replace(f"steps: {DEFAULT['train']['steps']}\n", "steps: 7\n", 1))
    assert load_params(path).train.steps == 7


@pytest.mark.parametrize("edit,expected", [
    (lambda r: r["train"].update(stpes=10), r"train: unknown key\(s\) \['stpes'\]; allowed keys: \[.*'steps'"),
    (lambda r: r["train"].update(steps="many"), r"train.steps: Input should be a valid integer"),
    (lambda r: first_kwyn(r)["sparsity"].update(t=1.5), r"sparsity.t: Input should be less than or equal to 1"),
    (lambda r: first_kwyn(r)["sparsity"].update(t=-0.1), r"sparsity.t: Input should be greater than or equal to 0"),
    (lambda r: first_kwyn(r)["sparsity"].update(loss="l1"), r"sparsity.loss: Input should be 'paper' or 'authors_code'"),
    (lambda r: first_kwyn(r).update(backbone="crepe-huge"), r"backbone: unknown backbone 'crepe-huge'; known: \[.*'crepe-full'"),
    (lambda r: first_kwyn(r).update(dataset="esc50"), r"dataset: unknown dataset 'esc50'; defined: \['notes', 'voices', 'words'\]"),
    (lambda r: first_kwyn(r).update(task="tempo"), r"task: unknown task 'tempo' for notes; known: \['pitch', 'instrument_family'\]"),
    (lambda r: first_kwyn(r).update(method="prune"), r"method: unknown method 'prune'; known: base, ssf, kwyn, lottery, convexity, hardconcrete"),
    (lambda r: first_kwyn(r).update(method="ssf"), r"a 'sparsity' block belongs to 'kwyn', not method 'ssf': remove it"),
    (lambda r: first_kwyn(r)["sparsity"].update(ratio=1.5), r"sparsity.ratio: Input should be less than 1"),
    (lambda r: r.update(scratch={"s": {"from": "nope"}}), r"scratch.s.from: 'nope' is not a kwyn experiment"),
    (lambda r: r.update(scratch={"s": {"from": "crepe_pitch_kwyn_50", "train": {"precision": "fp8"}}}), r"scratch.s.train.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
    (lambda r: first_kwyn(r).pop("sparsity"), r"method 'kwyn' needs a 'sparsity' block"),
    (lambda r: r["datasets"]["notes"].update(on_bad_audio="ignore"), r"on_bad_audio: Input should be 'error' or 'skip'"),
    # the other dataset kinds
    (lambda r: r["datasets"]["notes"].update(kind="esc51"),
     r"datasets.notes: Input tag 'esc51' found using 'kind' does not match any of the expected tags: "
     r"'soundfont_notes', 'spoken_commands', 'esc50', .*'custom'"),
    (with_dataset({"kind": "esc50"}), r"datasets.d: root: required for kind 'esc50' .*unless download: true"),
    (with_dataset({"kind": "esc50", "root": "x", "fold": 6}), r"datasets.d.fold: Input should be less than or equal to 5"),
    (with_dataset({"kind": "urbansound8k", "root": "x", "fold": 0}),
     r"datasets.d.fold: Input should be greater than or equal to 1"),
    (with_dataset({"kind": "esc50", "root": "x", "flod": 2}),
     r"datasets.d: unknown key\(s\) \['flod'\]; allowed keys: \[.*'fold'"),
    (with_dataset({"kind": "gtzan", "root": "x", "fold": 2}), r"datasets.d: unknown key\(s\) \['fold'\]"),
    (with_dataset({"kind": "fluent_speech_commands", "download": True}),
     r"datasets.d: download: Fluent Speech Commands is licensed per user"),
    (with_dataset({"kind": "custom"}), r"datasets.d.path: Field required"),
    (with_dataset({"kind": "fsd50k", "root": "x", "on_bad_audio": "drop"}),
     r"datasets.d.on_bad_audio: Input should be 'error' or 'skip'"),
    (with_dataset({"kind": "spoken_commands", "words": [True, "go"]}), r"datasets.d.words: a word is a boolean .*: quote it"),
    (with_dataset({"kind": "esc50", "root": "x"}, task="pitch"), r"task: unknown task 'pitch' for d; known: \['category'\]"),
    (with_dataset({"kind": "magnatagatune", "download": True}, task="genre"),
     r"task: unknown task 'genre' for d; known: \['tags'\]"),
    (lambda r: (with_dataset({"kind": "librispeech", "root": "x"}, task="transcript")(r),
                first_kwyn(r).update(backbone="clap-cnn14")),
     r"three_seeds.crepe_pitch_kwyn_50.backbone: 'clap-cnn14' gives no frame sequence .* cannot serve the ASR task"),
])
def test_bad_params_name_the_key_and_allowed_values(edit, expected):
    with pytest.raises(ParamsError, match=expected):
        validate(broken(edit))


def test_params_rewritten_by_dvc_exp_run_set_read_the_same(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel, dropping the quotes of 'yes' and 'no'."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    with modify_yaml(path) as data:
        data["train"]["steps"] = 7
    assert "[yes, no," in path.read_text()  # what DVC writes: unquoted
    before, after = load_params(ROOT / "params.yaml"), load_params(path)
    assert after.train.steps == 7
    assert after.datasets["words"].words == before.datasets["words"].words
    assert after.datasets["words"].words[:2] == ["yes", "no"]


def test_every_kind_validates_with_its_tasks():
    raw = copy.deepcopy(DEFAULT)
    raw["datasets"].update({
        "esc50_fold3": {"kind": "esc50", "root": "data_in/esc50", "fold": 3, "clip_seconds": 5.0},
        "us8k": {"kind": "urbansound8k", "download": True, "fold": 10},
        "fsd": {"kind": "fsd50k", "root": "/x"}, "gtzan": {"kind": "gtzan", "root": "/x"},
        "mtt": {"kind": "magnatagatune", "root": "/x", "top": 10}, "nsynth": {"kind": "nsynth", "root": "/x"},
        "sc": {"kind": "speech_commands", "download": True}, "fsc": {"kind": "fluent_speech_commands", "root": "/x"},
        "libri": {"kind": "librispeech", "root": "/x"}, "mine": {"kind": "custom", "path": "x.csv"},
        "words": {"kind": "spoken_commands", "words": ["yes", "go"], "split_per_voice": [2, 1, 1]}})
    tasks = {"esc50_fold3": "category", "us8k": "class", "fsd": "labels", "gtzan": "genre", "mtt": "tags",
             "nsynth": "pitch", "sc": "word", "fsc": "intent", "mine": "labels", "words": "word"}
    for dataset, task in tasks.items():
        raw["experiments"][f"e_{dataset}"] = {"backbone": "crepe-tiny", "dataset": dataset, "task": task,
                                              "method": "base"}
    params = validate(raw)
    assert params.datasets["esc50_fold3"].loader_args() == {"fold": 3}
    assert params.datasets["mtt"].loader_args() == {"top": 10}
    assert params.datasets["fsd"].TASKS == {"labels": "tagging"}
    assert experiment("e_mine", params).dataset_params.path == "x.csv"


def test_experiment_merges_its_train_overrides():
    raw = broken(lambda r: first_kwyn(r).update(train={"steps": 7}))
    name = next(k for k, e in raw["three_seeds"].items() if e["method"] == "kwyn")
    exp = experiment(name, validate(raw))
    assert exp.train.steps == 7 and exp.train.lr == raw["train"]["lr"]
    with pytest.raises(ParamsError, match="unknown experiment 'nope'"):
        experiment("nope", validate(raw))

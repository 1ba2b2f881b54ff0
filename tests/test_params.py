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
    return next(e for e in raw["experiments"].values() if e["method"] == "kwyn")


def test_the_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.experiments and all(e.dataset in params.datasets for e in params.experiments.values())


@pytest.mark.parametrize("edit,expected", [
    (lambda r: r["train"].update(stpes=10), r"train: unknown key\(s\) \['stpes'\]; allowed keys: \[.*'steps'"),
    (lambda r: r["train"].update(steps="many"), r"train.steps: Input should be a valid integer"),
    (lambda r: first_kwyn(r)["sparsity"].update(t=1.5), r"sparsity.t: Input should be less than or equal to 1"),
    (lambda r: first_kwyn(r)["sparsity"].update(t=-0.1), r"sparsity.t: Input should be greater than or equal to 0"),
    (lambda r: first_kwyn(r)["sparsity"].update(loss="l1"), r"sparsity.loss: Input should be 'paper' or 'authors_code'"),
    (lambda r: first_kwyn(r).update(backbone="crepe-huge"), r"backbone: unknown backbone 'crepe-huge'; known: \[.*'crepe-full'"),
    (lambda r: first_kwyn(r).update(dataset="esc50"), r"dataset: unknown dataset 'esc50'; defined: \['notes'\]"),
    (lambda r: first_kwyn(r).update(task="tempo"), r"task: unknown task 'tempo' for notes; known: \['pitch', 'instrument_family'\]"),
    (lambda r: first_kwyn(r).update(method="prune"), r"method: Input should be 'base' or 'kwyn'"),
    (lambda r: first_kwyn(r).pop("sparsity"), r"method 'kwyn' needs a 'sparsity' block"),
    (lambda r: r["datasets"]["notes"].update(on_bad_audio="ignore"), r"on_bad_audio: Input should be 'error' or 'skip'"),
])
def test_bad_params_name_the_key_and_allowed_values(edit, expected):
    with pytest.raises(ParamsError, match=expected):
        validate(broken(edit))


def test_experiment_merges_its_train_overrides():
    raw = broken(lambda r: first_kwyn(r).update(train={"steps": 7}))
    name = next(k for k, e in raw["experiments"].items() if e["method"] == "kwyn")
    exp = experiment(name, validate(raw))
    assert exp.train.steps == 7 and exp.train.lr == raw["train"]["lr"]
    with pytest.raises(ParamsError, match="unknown experiment 'nope'"):
        experiment("nope", validate(raw))

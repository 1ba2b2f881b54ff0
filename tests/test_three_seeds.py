"""`three_seeds`: one params.yaml entry, three runs (train.seed 0, 1, 2) that the rest of kwyn sees as experiments."""
import copy

import pytest
from conftest import tiny_params

from kwyn.grid import expand, runs
from kwyn.params import GridSpec, ParamsError, experiment, experiment_names, stage_runs, validate

TRIO = {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch", "method": "kwyn",
        "sparsity": {"loss": "paper", "t": 0.5, "lambda": 1.0, "ratio": 0.5}, "train": {"steps": 9}}


def with_trio(**sections) -> dict:
    raw = tiny_params()
    raw["three_seeds"] = {"trio": copy.deepcopy(TRIO)}
    raw.update(sections)
    return raw


def test_an_entry_is_three_runs_resolved_as_experiments_with_train_seed_0_1_2():
    params = validate(with_trio())
    assert experiment_names(params) == ["trio", "trio_seed1", "trio_seed2", "tiny_base", "tiny_kwyn"]
    assert stage_runs("trio", params) == ["trio", "trio_seed1", "trio_seed2"]
    assert stage_runs("tiny_kwyn", params) == ["tiny_kwyn"]
    with pytest.raises(ParamsError, match="unknown experiment 'trio_seed3'"):
        stage_runs("trio_seed3", params)
    # each run is what the same entry under `experiments` with that train.seed would be
    raw = tiny_params()
    raw["experiments"].update({f"alone{seed}": {**TRIO, "train": {**TRIO["train"], "seed": seed}} for seed in (1, 2)})
    raw["experiments"]["alone0"] = TRIO
    alone = validate(raw)
    for run, seed in [("trio", 0), ("trio_seed1", 1), ("trio_seed2", 2)]:
        resolved = experiment(run, params)
        assert resolved.train.seed == seed and resolved.train.steps == 9
        assert resolved.model_dump(exclude={"name"}) == experiment(f"alone{seed}", alone).model_dump(exclude={"name"})


@pytest.mark.parametrize("edit,expected", [
    (lambda r: r["three_seeds"]["trio"].update(train={"seed": 4}),
     r"three_seeds.trio.train.seed: leave it out; its runs have train.seed 0, 1, 2"),
    (lambda r: r["experiments"].update(trio_seed2=r["experiments"]["tiny_base"]),
     r"three_seeds.trio: its run 'trio_seed2' is already an experiment; names must be unique"),
    (lambda r: r["experiments"].update(trio=r["experiments"]["tiny_base"]),
     r"three_seeds.trio: the name is already an experiment"),
    (lambda r: r["train"].update(seed=1), r"train.seed 1: the first run of each `three_seeds` entry .* must be 0"),
    (lambda r: r["three_seeds"]["trio"].update(task="tempo"), r"three_seeds.trio.task: unknown task 'tempo'"),
    (lambda r: r.update(scratch={"s": {"from": "trio_seed3"}}), r"scratch.s.from: 'trio_seed3' is not a kwyn experiment"),
])
def test_bad_entries_name_the_key(edit, expected):
    raw = with_trio()
    edit(raw)
    with pytest.raises(ParamsError, match=expected):
        validate(raw)


def test_a_scratch_entry_may_start_from_any_of_the_runs():
    params = validate(with_trio(scratch={"s": {"from": "trio_seed1"}}))
    assert experiment("s", params).source == "trio_seed1"
    assert experiment_names(params)[-1] == "s"


def spec(**changes) -> GridSpec:
    body = {"description": "seeds", "name_by": "task",
            "datasets": {"notes": tiny_params()["datasets"]["notes"]},
            "tasks": {"crepe-tiny": [["notes", "pitch"]]}, "methods": ["base", "kwyn"], "ratios": [0.5],
            "sparsity": {"loss": "paper", "t": 0.5, "lambda": 1.0}, **changes}
    return GridSpec.model_validate(body)


def test_a_grid_puts_seeds_0_1_2_of_a_configuration_in_three_seeds_and_other_seeds_in_experiments():
    e = expand(spec(seeds=[0, 1, 2, 3], seeds_for={"base": [0, 1]}))
    assert list(e["three_seeds"]) == ["crepetiny_pitch_kwyn_50"]
    assert list(e["experiments"]) == ["crepetiny_pitch_base", "crepetiny_pitch_base_seed1", "crepetiny_pitch_kwyn_50_seed3"]
    assert "seed" not in e["three_seeds"]["crepetiny_pitch_kwyn_50"].get("train", {})
    assert e["experiments"]["crepetiny_pitch_kwyn_50_seed3"]["train"]["seed"] == 3
    assert runs(e) == ["crepetiny_pitch_kwyn_50", "crepetiny_pitch_kwyn_50_seed1", "crepetiny_pitch_kwyn_50_seed2",
                       "crepetiny_pitch_base", "crepetiny_pitch_base_seed1", "crepetiny_pitch_kwyn_50_seed3"]
    # the expansion is a valid params document whose runs are the grid's runs with their seeds
    raw = tiny_params()
    raw.update({section: e[section] for section in ("datasets", "experiments", "three_seeds", "scratch")})
    params = validate(raw)
    assert sorted(experiment_names(params)) == sorted(runs(e))
    assert [experiment(n, params).train.seed for n in runs(e)] == [0, 1, 2, 0, 1, 3]
    # seeds that start elsewhere than train.seed 0 are experiments, as before
    assert expand(spec(seeds=[1, 2, 3]))["three_seeds"] == {}

"""benchmarks/convergence.py --report: the ablation table and budget figure from hand-made rows."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


def row(recipe_name, recipe, steps, seed, test, val, train=None):
    return {"recipe_name": recipe_name, "experiment": "whisper_word_kwyn_75", "recipe": recipe, "steps": steps,
            "seed": seed, "target_ratio": 0.75, "trim_ratio": 0.75, "selected_step": steps, "val_selected": val,
            "val_min_after_ramp": val / 2, "valid": val, "test": test, "train_seconds": 10.0, "reused": False,
            "train": train or {}, "sparsity": {}}


def test_report_averages_seeds_and_names_what_each_row_changed(tmp_path):
    converge = {"head_warmup": 100, "distill": 1.0, "refit": 100, "init": "constant", "init_batches": 16}
    rows = [row("paper", None, 100, 0, 0.5, 0.6), row("paper", None, 200, 0, 0.6, 0.7),
            row("converge", converge, 100, 0, 0.7, 0.8, {"mask_lr": 0.2}),
            row("converge", converge, 100, 1, 0.9, 0.9, {"mask_lr": 0.2})]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "convergence.py"), "--json", str(tmp_path / "rows.json"),
                    "--report", str(tmp_path / "out")], check=True, capture_output=True)
    assert (tmp_path / "out.png").stat().st_size > 10_000
    table = (tmp_path / "out.md").read_text().splitlines()
    converge_line = next(line for line in table if "distill=1.0" in line)
    cells = [c.strip() for c in converge_line.strip("|").split("|")]
    assert cells[1] == "head_warmup=100 distill=1.0 refit=100 mask_lr=0.2"  # only what differs from the paper's loop
    assert cells[3] == "2" and cells[8] == "0.800"  # two seeds, mean test (0.7 + 0.9) / 2
    assert cells[6] == "0.850"  # their mean score on the whole validation split
    assert sum("paper's loop" in line for line in table) == 2  # one row per budget


def test_run_folders_stay_short_and_distinct():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from convergence import MAX_NAME, run_folder

    assert run_folder('x__{"distill": 3.0}__200__0') == "x____distill___3.0___200__0"  # short: the settings, readable
    recipe = json.dumps({f"option_{i}": i for i in range(30)})
    long_a, long_b = run_folder(f"x__{recipe}__200__0"), run_folder(f"x__{recipe}__200__1")
    assert len(long_a) == MAX_NAME < 255 and long_a != long_b  # the seed is past the prefix: the hash tells them apart


def test_with_block_changes_one_block_validated_and_refuses_a_missing_one():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pydantic
    from conftest import tiny_params
    from convergence import with_block

    from kwyn.params import experiment, validate

    raw = tiny_params()
    raw["experiments"]["tiny_hc"] = {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch",
                                     "method": "hardconcrete", "hardconcrete": {"ratio": 0.5}}
    params = validate(raw)
    hc = experiment("tiny_hc", params)
    changed = with_block(hc, "hardconcrete", {"lr": 0.2, "init_drop": 0.5})
    assert (changed.hardconcrete.lr, changed.hardconcrete.init_drop, changed.hardconcrete.ratio) == (0.2, 0.5, 0.5)
    assert hc.hardconcrete.lr == 0.1 and with_block(hc, "hardconcrete", {}) is hc
    with pytest.raises(pydantic.ValidationError):
        with_block(hc, "hardconcrete", {"init_drop": 1.5})
    with pytest.raises(ValueError, match="tiny_hc has no sparsity block"):
        with_block(hc, "sparsity", {"ratio_ramp": 0.8})
    kwyn = with_block(experiment("tiny_kwyn", params), "sparsity", {"ratio_ramp": 0.8})
    assert kwyn.sparsity.ratio_ramp == 0.8 and kwyn.sparsity.lambda_ == 50.0

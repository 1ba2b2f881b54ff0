"""benchmarks/validation_after_ramp.py: where a run's ramp ends, and the 0.8 x base rule on hand-made histories."""
import importlib.util
import json

from conftest import ROOT, tiny_params

from kwyn.params import experiment, validate

spec = importlib.util.spec_from_file_location("validation_after_ramp", ROOT / "benchmarks" / "validation_after_ramp.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def exps():
    raw = tiny_params(steps=100)
    tiny = {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch"}
    raw["experiments"] = {
        "paper": {**tiny, "method": "kwyn", "sparsity": {"ratio": 0.5}},
        "recipe": {**tiny, "method": "kwyn", "sparsity": {"ratio": 0.5, "ratio_ramp": 0.4},
                   "recipe": {"head_warmup": 30, "refit": 20}},
        "hc": {**tiny, "method": "hardconcrete", "hardconcrete": {"ratio": 0.5, "ratio_ramp": 0.3}},
        "base": {**tiny, "method": "base"}}
    params = validate(raw)
    return params, {name: experiment(name, params) for name in raw["experiments"]}


def test_the_ramp_ends_after_the_warm_up_at_its_share_of_the_mask_steps():
    _, e = exps()
    assert bench.ramp_end(e["paper"]) == 50
    assert bench.ramp_end(e["recipe"]) == 30 + 40  # warm-up, then 40 % of the 100 mask steps
    assert bench.ramp_end(e["hc"]) == 30


def test_rows_apply_the_rule_to_validations_after_the_ramp(tmp_path, monkeypatch):
    params, _ = exps()
    monkeypatch.setattr(bench, "load_params", lambda: params)
    for name, vals in {"base": [0.9, 0.9, 1.0], "paper": [0.95, 0.5, 0.85], "recipe": [0.2, 0.9, 0.81]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "history.csv").write_text(
            "step,val_metric\n" + "".join(f"{s},{v}\n" for s, v in zip((40, 70, 100), vals)))
        (tmp_path / name / "summary.json").write_text(json.dumps({"selected": {"val_metric": max(vals)}}))
    found = {r["experiment"]: r for r in bench.rows(tmp_path)}
    assert set(found) == {"paper", "recipe"}  # base has no target; hc has no run
    assert found["paper"]["val_min_after_ramp"] == 0.5 and found["paper"]["step_of_min"] == 70
    assert found["paper"]["threshold"] == 0.8 * 1.0 and not found["paper"]["holds"]
    assert found["recipe"]["val_min_after_ramp"] == 0.81 and found["recipe"]["holds"]  # 0.2 is before its ramp end

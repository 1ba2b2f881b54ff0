"""scripts/compare_metrics.py: what 'a refactor leaves every result unchanged' is checked with."""
import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("compare_metrics", ROOT / "scripts" / "compare_metrics.py")
compare_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_metrics)


def result(**changes):
    base = {"experiment": "x", "test": {"accuracy": 0.75}, "kept_indices": {"conv1": [0, 2, 5]}, "trim_ratio": 0.5,
            "latency_ms": 3.0, "speedup": 2.0}
    return {**base, **changes}


def test_timings_are_left_out_and_everything_else_must_match(tmp_path):
    before = {"x": result(), "gone": result()}
    after = {"x": result(latency_ms=9.0, speedup=1.1), "new": result()}
    out = compare_metrics.compare(before, after)
    assert out["compared"] == out["identical"] == 1 and out["differing"] == {}
    assert out["only_before"] == ["gone"] and out["only_after"] == ["new"]


def test_a_changed_unit_or_score_is_reported_with_its_key(tmp_path):
    after = {"x": result(kept_indices={"conv1": [0, 2, 6]}, test={"accuracy": 0.75 + 1e-6})}
    out = compare_metrics.compare({"x": result()}, after)
    keys = [d["key"] for d in out["differing"]["x"]]
    assert keys == ["kept_indices.conv1[2]", "test.accuracy"]
    assert compare_metrics.compare({"x": result()}, after, rel=1e-5)["differing"]["x"][0]["key"] == "kept_indices.conv1[2]"


def test_the_command_line_reads_folders_and_exits_nonzero_on_a_difference(tmp_path):
    for side, value in (("a", 0.5), ("b", 0.25)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "x.json").write_text(json.dumps(result(trim_ratio=value)))
    assert compare_metrics.main(["--before", str(tmp_path / "a"), "--after", str(tmp_path / "a")]) == 0
    assert compare_metrics.main(["--before", str(tmp_path / "a"), "--after", str(tmp_path / "b"),
                                 "--json", str(tmp_path / "out.json")]) == 1
    assert json.loads((tmp_path / "out.json").read_text())["differing"]["x"][0]["key"] == "trim_ratio"


def test_score_table_averages_each_configuration_over_its_seeds():
    def run(val, test, trim):
        return result(val_metric=val, test={"accuracy": test}, metric="accuracy", trim_ratio=trim)

    before = {"net_kwyn_50": run(0.8, 0.7, 0.5), "net_kwyn_50_seed1": run(0.6, 0.9, 0.52), "net_only_before": run(1, 1, 0)}
    after = {"net_kwyn_50": run(0.9, 0.8, 0.5), "net_kwyn_50_seed1": run(0.7, 0.6, 0.5)}
    table = compare_metrics.score_table(before, after, ("fp32", "bf16")).splitlines()
    assert table[0].startswith("| configuration | seeds | removed % fp32 | removed % bf16 | val fp32 | val bf16")
    assert table[2:] == ["| net_kwyn_50 | 2 | 51.0 | 50.0 | 0.700 | 0.800 | 0.800 [0.700-0.900] | 0.700 [0.600-0.800] |"]

"""benchmarks/stage_overheads.py: every item it reports is measured."""
import json
import subprocess
import sys

from conftest import ROOT


def test_stage_overheads_measures_every_item(tmp_path):
    """benchmarks/stage_overheads.py runs its real imports, papermill engines and ratio-control updates."""
    out = tmp_path / "stage_overheads.json"
    shorter = tmp_path / "short.lock"  # a lock of two stages' entries: rewritten faster than the whole one
    shorter.write_text("\n".join((ROOT / "dvc.lock").read_text().splitlines()[:60]) + "\n")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage_overheads.py"), "--repeats", "1",
                    "--compare-locks", str(shorter), "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result["import_s"]) == {"torchmetrics.functional.classification", "torchcrepe"}
    assert set(result["kernel_stop_s"]) == {"nbclient", "kwyn"}
    assert set(result["ratio_update_ms"]) == {"crepe-full", "whisper-tiny-encoder"}
    assert all(set(v) == {"meta_model_per_probe", "trimmed_param_counter"} for v in result["ratio_update_ms"].values())
    numbers = [result["papermill_start_s"], *result["import_s"].values(), *result["kernel_stop_s"].values(),
               *result["lock_parse_s"].values(), result["lock_rewrite_s"], result["params_parse_s"], *(t for v in result["ratio_update_ms"].values() for t in v.values())]
    assert all(x > 0 for x in numbers)
    assert result["lock_lines"] == len((ROOT / "dvc.lock").read_text().splitlines())
    assert result["lock_rewrite_compared"] == [{"lock": str(shorter), "lines": 60,
                                                "rewrite_s": result["lock_rewrite_compared"][0]["rewrite_s"]}]
    assert 0 < result["lock_rewrite_compared"][0]["rewrite_s"] < result["lock_rewrite_s"]

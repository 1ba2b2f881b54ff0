"""benchmarks/repro_time.py: a repro's time split from papermill's records, checked by hand."""
import json
import subprocess
import sys

from conftest import ROOT


def write_notebook(path, start_s, end_s, cell_seconds):
    """A notebook as papermill leaves it, running from start_s to end_s seconds after midnight."""
    cells = [{"cell_type": "code", "source": [], "metadata": {"papermill": {"duration": d}}} for d in cell_seconds]
    meta = {"papermill": {"start_time": f"2026-01-01T00:00:{start_s:02d}", "end_time": f"2026-01-01T00:00:{end_s:02d}",
                          "duration": float(end_s - start_s)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": meta}))


def test_repro_time_sums_stages_gaps_and_kernel_starts(tmp_path):
    executed = tmp_path / "executed"
    write_notebook(executed / "01_prepare_data" / "notes.ipynb", 0, 10, [8.0])
    write_notebook(executed / "02_train_masks" / "crepe_pitch_kwyn_50.ipynb", 13, 33, [1.0, 15.0])
    write_notebook(executed / "02_train_masks" / "crepe_pitch_scratch_50.ipynb", 37, 47, [9.0])
    out = tmp_path / "repro_time.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "repro_time.py"), "--executed", str(executed),
                    "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["notebooks"] == 3
    assert result["first_start_to_last_end_s"] == 47
    assert result["notebooks_s"] == 10 + 20 + 10
    assert result["between_notebooks_s"] == 3 + 4
    assert result["longest_gap_s"] == 4 and result["longest_gap_after"] == "02_train_masks/crepe_pitch_kwyn_50.ipynb"
    assert result["kernel_start_s"] == (10 - 8) + (20 - 16) + (10 - 9)
    assert result["by_group_s"] == {"data": 10, "crepe": 30}
    assert result["by_stage_s"] == {"01_prepare_data": 10, "02_train_masks": 30}
    assert result["scratch_s"] == {"crepe": 10}
    assert result["unfinished"] == []


def test_repro_time_counts_a_running_notebook_without_timing_it(tmp_path):
    executed = tmp_path / "executed"
    write_notebook(executed / "01_prepare_data" / "notes.ipynb", 0, 10, [8.0])
    running = executed / "02_train_masks" / "crepe_pitch_kwyn_50.ipynb"
    write_notebook(running, 13, 33, [1.0])
    notebook = json.loads(running.read_text())
    notebook["metadata"]["papermill"].update(end_time=None, duration=None)  # as papermill writes it mid-run
    running.write_text(json.dumps(notebook))
    out = tmp_path / "repro_time.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "repro_time.py"), "--executed", str(executed),
                    "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["notebooks"] == 1 and result["notebooks_s"] == 10
    assert result["unfinished"] == ["02_train_masks/crepe_pitch_kwyn_50.ipynb"]


def test_repro_time_without_executed_notebooks_says_what_to_run(tmp_path):
    failed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "repro_time.py"), "--executed",
                             str(tmp_path), "--json", str(tmp_path / "out.json")], capture_output=True, text=True)
    assert failed.returncode != 0 and "run `dvc repro` first" in failed.stderr

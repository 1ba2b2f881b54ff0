"""benchmarks/ort_layout.py: the blocked-layout count of ONNX Runtime's optimised graphs, full against trimmed."""
import importlib.util
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # ort_layout imports its sibling scripts, as when run as a script
spec = importlib.util.spec_from_file_location("ort_layout", ROOT / "benchmarks" / "ort_layout.py")
ort_layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ort_layout)


def test_ort_layout_counts_every_model_and_rounding(tmp_path):
    out, table = tmp_path / "layout.json", tmp_path / "layout.md"
    ort_layout.main(["--backbones", "crepe-tiny", "--ratios", "0.5", "--multiples", "1", "8", "--json", str(out),
                     "--report", str(table)])
    rows = json.loads(out.read_text())
    assert [(r["model"], r["multiple_of"]) for r in rows] == [("full", 1), ("0.5", 1), ("0.5", 8)]
    assert rows[0]["removed"] == 0 and 0.4 < rows[1]["removed"] < 0.6
    assert len({r["convs"] for r in rows}) == 1 and rows[0]["convs"] >= 6  # CREPE's six convolutions, in every model
    assert all(0 <= r["blocked"] <= r["convs"] for r in rows)
    lines = table.read_text().splitlines()
    assert len(lines) == 2 + len(rows) and "| crepe-tiny 0.5 | x8 |" in lines[-1]

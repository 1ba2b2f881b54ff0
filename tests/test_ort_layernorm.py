"""benchmarks/ort_layernorm.py: what it times is the fused graph against kwyn's unfused one."""
import json
import subprocess
import sys

from conftest import ROOT


def test_ort_layernorm_times_the_fused_and_the_unfused_graph(tmp_path):
    out = tmp_path / "ort_layernorm.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ort_layernorm.py"), "--layers", "3", "--frames", "9",
                    "--width", "16", "--repeats", "2", "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["skip_layer_norm_nodes"] == {"kwyn_session": 0, "onnxruntime_default": 3}
    assert set(result["ms"]) == {"pytorch", "onnxruntime_default", "kwyn_session", "onnxruntime_no_optimisation"}
    assert all(v > 0 for v in result["ms"].values())

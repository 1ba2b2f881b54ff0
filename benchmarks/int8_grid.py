"""int8 on top of trimming for trained models of the grid: test score, size and ONNX Runtime latency of each model
exported fp32 and quantised int8 (kwyn.export.evaluate_int8), beside the full encoder's ONNX Runtime latency.

Run after `make repro` (it reads models/<experiment> and the prepared test split of its dataset):

    python benchmarks/int8_grid.py --experiments crepe_pitch_kwyn_refit_50 crepe_pitch_kwyn_refit_75 \
        --json benchmarks/results/int8_grid.json

The ONNX files go to a temporary folder; <json>.md gets the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kwyn import export  # noqa: E402
from kwyn.data.prepare import PreparedDataset  # noqa: E402
from kwyn.io import read_json  # noqa: E402
from kwyn.pipeline import data_dir, experiment, metrics_path, model_dir  # noqa: E402


def row(name: str, out: Path, repeats: int) -> dict:
    exp = experiment(name)
    test_set = PreparedDataset(data_dir(exp.dataset) / "prepared", "test", exp.task)
    seconds = exp.profile.input_seconds
    result = export.evaluate_int8(model_dir(name), test_set, out_dir=out, seconds=seconds, repeats=repeats)
    torch_result = read_json(metrics_path(name))  # the evaluate stage's PyTorch numbers of the same model
    return {"experiment": name, "removed": torch_result["trim_ratio"], "metric": result["metric"],
            "torch": torch_result["test"][result["metric"]], "onnx_fp32": result["fp32"], "onnx_int8": result["int8"],
            "fp32_mb": result["fp32_size_mb"], "int8_mb": result["size_mb"],
            "fp32_ms": result["fp32_latency_ms"], "int8_ms": result["latency_ms"],
            "torch_ms": torch_result["latency_ms"], "input_seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        rows = [row(name, Path(out), args.repeats) for name in args.experiments]
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    import pandas as pd

    table = pd.DataFrame(rows).round(4)
    args.json.with_suffix(".md").write_text(
        "int8 on top of trimming (`benchmarks/int8_grid.py`): test score of the trimmed model in PyTorch, as ONNX "
        "fp32 and as ONNX int8 (ONNX Runtime dynamic quantisation of MatMul/Gemm), file sizes (MB) and latency (ms, "
        "batch 1, 1 thread; ONNX Runtime medians, fp32 and int8 alternated; torch_ms from the evaluate stage).\n\n"
        + table.to_markdown(index=False) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

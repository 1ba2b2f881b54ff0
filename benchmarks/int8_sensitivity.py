"""Which layers int8 breaks: a trimmed model of the grid quantised one MatMul/Gemm at a time.

ONNX Runtime's dynamic quantisation (kwyn.export.quantize_int8) turns every MatMul/Gemm with a constant weight
into int8 weights and int8 activations, each quantised per tensor at run time. This quantises one such node at a
time (the others stay float) and scores each model on a split, so that a model whose int8 score collapses shows
which node does it; and, for comparison, every node at once, per tensor and per output channel.

Run after `make repro` (it reads models/<experiment> and the prepared split of its dataset):

    python benchmarks/int8_sensitivity.py --experiment whisper_word_kwyn_distil_75 --split valid \
        --json benchmarks/results/int8_sensitivity.json

<json>.md gets the table. The ONNX files go to a temporary folder.
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
from kwyn.metrics import task_type  # noqa: E402
from kwyn.pipeline import data_dir, experiment, model_dir  # noqa: E402


def quantized(fp32: Path, out: Path, nodes: list[str] | None = None, per_channel: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=list(export.INT8_OPS),
                     nodes_to_quantize=nodes, per_channel=per_channel)
    return out


def score(path: Path, dataset, ttype) -> float:
    return ttype.score(export.onnx_predict(export.onnx_session(path), dataset), dataset)[ttype.primary]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--split", default="valid", help="the split scored (valid: what a choice may be based on)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    exp = experiment(args.experiment)
    dataset = PreparedDataset(data_dir(exp.dataset) / "prepared", args.split, exp.task)
    _, ttype = task_type(dataset)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = export.export_onnx(model_dir(args.experiment), tmp / "fp32.onnx", seconds=exp.profile.input_seconds)
        rows.append({"int8": "none (fp32)", "op": "", "weight": "", "score": score(fp32, dataset, ttype)})
        for per_channel in (False, True):
            path = quantized(fp32, tmp / f"all_{per_channel}.onnx", per_channel=per_channel)
            rows.append({"int8": f"every node, {'per channel' if per_channel else 'per tensor'}", "op": "",
                         "weight": "", "score": score(path, dataset, ttype)})
        path = export.quantize_int8(fp32, tmp / "kwyn.onnx")
        rows.append({"int8": "every node but the empty ones (kwyn.export.quantize_int8)", "op": "", "weight": "",
                     "score": score(path, dataset, ttype)})
        for i, (name, op, shape) in enumerate(export.weight_nodes(fp32)):
            path = quantized(fp32, tmp / f"node{i}.onnx", nodes=[name])
            rows.append({"int8": name, "op": op, "weight": "x".join(map(str, shape)), "score": score(path, dataset, ttype)})
            print(rows[-1], flush=True)
    base = rows[0]["score"]
    for row in rows:
        row["vs fp32 (points)"] = round(100 * (row["score"] - base), 1)
    args.json.write_text(json.dumps({"experiment": args.experiment, "split": args.split, "metric": ttype.primary,
                                     "rows": rows}, indent=1) + "\n")
    import pandas as pd

    table = pd.DataFrame(rows).round(4)
    args.json.with_suffix(".md").write_text(
        f"int8 one node at a time (`benchmarks/int8_sensitivity.py`): {args.experiment}, {args.split} split, "
        f"{ttype.primary}. Each row quantises only the named MatMul/Gemm (ONNX Runtime dynamic quantisation, int8 "
        f"weights per tensor, activations per tensor at run time); the first rows: none, every node, and every node but those with an empty weight (what kwyn exports).\n\n"
        + table.to_markdown(index=False) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()

"""ONNX Runtime's SkipLayerNormalization against the Add + LayerNormalization it replaces (kwyn.export.onnx_session).

A stack of 26 residual blocks `x = LayerNorm(x + tanh(x))` on a (1, 199, 768) input, Wav2Vec2-base's
stream for 4 s of audio and its count of layer norms, exported as kwyn exports (torch.onnx, dynamo) and run
by ONNX Runtime at 1 thread: with its default graph optimisations (which fuse each Add + LayerNorm into
SkipLayerNormalization), with that one fusion off (kwyn's session), and with all optimisations off; PyTorch beside.
Median milliseconds over --repeats.

    python benchmarks/ort_layernorm.py --json benchmarks/results/ort_layernorm.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from kwyn.export import UNFUSED, onnx_session
from kwyn.io import write_json


class ResidualNorms(nn.Module):
    def __init__(self, layers: int, width: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))

    def forward(self, x):
        for norm in self.norms:
            x = norm(x + torch.tanh(x))
        return x


def median_ms(run, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def fused_ops(path: Path, **options) -> int:
    """SkipLayerNormalization nodes in ONNX Runtime's optimised graph of the model."""
    with tempfile.TemporaryDirectory() as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        onnx_session(path, optimized_model_filepath=str(optimised), **options)
        return sum(n.op_type == "SkipLayerNormalization" for n in onnx.load(str(optimised), load_external_data=False).graph.node)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--layers", type=int, default=26)
    parser.add_argument("--frames", type=int, default=199)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = ResidualNorms(args.layers, args.width).eval()
    x = torch.randn(1, args.frames, args.width)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "norms.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], verbose=False)
        feed = {"x": x.numpy()}

        def session(**options):
            s = onnx_session(path, **options)
            return lambda: s.run(None, feed)

        fused = ort.SessionOptions()  # ONNX Runtime's defaults: every fusion on
        fused.intra_op_num_threads, fused.inter_op_num_threads, fused.log_severity_level = 1, 1, 3
        default = ort.InferenceSession(str(path), fused, providers=["CPUExecutionProvider"])
        result = {
            "onnxruntime": ort.__version__, "layers": args.layers, "frames": args.frames, "width": args.width,
            "threads": 1, "repeats": args.repeats,
            "ms": {
                "pytorch": median_ms(lambda: model(x), args.repeats),
                "onnxruntime_default": median_ms(lambda: default.run(None, feed), args.repeats),
                "kwyn_session": median_ms(session(), args.repeats),
                "onnxruntime_no_optimisation": median_ms(
                    session(graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL), args.repeats),
            },
            "unfused": UNFUSED,
            "skip_layer_norm_nodes": {"kwyn_session": fused_ops(path)},
        }
        with tempfile.TemporaryDirectory() as opt_dir:
            fused.optimized_model_filepath = str(Path(opt_dir) / "default.onnx")
            ort.InferenceSession(str(path), fused, providers=["CPUExecutionProvider"])
            result["skip_layer_norm_nodes"]["onnxruntime_default"] = sum(
                n.op_type == "SkipLayerNormalization" for n in onnx.load(fused.optimized_model_filepath, load_external_data=False).graph.node)
    result["ms"] = {k: round(v, 2) for k, v in result["ms"].items()}
    print(result)
    write_json(args.json, result)


if __name__ == "__main__":
    main()

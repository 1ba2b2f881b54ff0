"""ONNX Runtime's SkipLayerNormalization against the Add + LayerNormalization it replaces (kwyn.export.onnx_session).

A stack of 26 residual blocks `x = LayerNorm(x + tanh(x))` on a (1, 199, 768) input, Wav2Vec2-base's
stream for 4 s of audio and its count of layer norms, exported as kwyn exports (torch.onnx, dynamo) and run
by ONNX Runtime at 1 thread: with its default graph optimisations (which fuse each Add + LayerNorm into
SkipLayerNormalization), with that one fusion off (kwyn's session), and with all optimisations off; PyTorch beside.
Median milliseconds over --repeats, the three ONNX Runtime sessions alternated run by run.

    python benchmarks/ort_layernorm.py --json benchmarks/results/ort_layernorm.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

from kwyn.export import INPUT, UNFUSED, onnx_latency_ms, onnx_session, optimized_nodes
from kwyn.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import median_step  # noqa: E402


class ResidualNorms(nn.Module):
    def __init__(self, layers: int, width: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))

    def forward(self, x):
        for norm in self.norms:
            x = norm(x + torch.tanh(x))
        return x


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
    settings = {"onnxruntime_default": {"unfused": ""}, "kwyn_session": {},
                "onnxruntime_no_optimisation": {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "norms.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=[INPUT], verbose=False)
        # the three sessions alternated run by run, as every ONNX Runtime timing of kwyn
        ms = onnx_latency_ms({name: onnx_session(path, **s) for name, s in settings.items()}, x.numpy(), args.repeats)
        ms["pytorch"] = 1e3 * median_step(lambda: model(x), args.repeats, 5, torch.device("cpu"))
        fused = {name: sum(n.op_type == "SkipLayerNormalization" for n in optimized_nodes(path, **settings[name]))
                 for name in ("onnxruntime_default", "kwyn_session")}
    result = {"onnxruntime": ort.__version__, "layers": args.layers, "frames": args.frames, "width": args.width,
              "threads": 1, "repeats": args.repeats, "ms": {k: round(v, 2) for k, v in ms.items()},
              "unfused": UNFUSED, "skip_layer_norm_nodes": fused}
    print(result)
    write_json(args.json, result)


if __name__ == "__main__":
    main()

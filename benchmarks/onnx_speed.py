"""PyTorch vs ONNX Runtime latency of a full and trimmed encoders (+ head), and the int8 ONNX models.

Models: a backbone trimmed by uniformly random masks at --ratios (as benchmarks/speedup.py: each
site keeps the same random share of its units, found by bisection on the exact parameter count),
or the trimmed models of --models models/<exp> ... (each compared with its full backbone, random
weights of the same architecture). Every model gets an MLP head (random weights; 10 classes) and
is exported with kwyn.export (checked against PyTorch within 1e-4); the int8 model is its
ONNX Runtime dynamic quantisation (Linear layers; --int8-ops to add Conv).

Per model: PyTorch latency, ONNX Runtime fp32 and int8 latency (medians over --repeats after
--warmup, batch 1, --threads threads; the PyTorch models alternated run by run, then the ONNX
sessions likewise, all in one process), speed-ups against the full model in the same runtime,
FLOPs ratio (kwyn.profile), sizes (parameters x 4 bytes; ONNX files on disk). With --warm-block N,
PyTorch and ONNX Runtime fp32 are timed a second time warm: each model N runs in a row after an
untimed one, the models taking turns block by block (kwyn.timing: a model serving requests back to
back, its weights left in the caches by its own previous run rather than evicted by another model's).
With --torch-linear onednn, the PyTorch models run their Linear layers on oneDNN instead of PyTorch's
default BLAS (an experiment: README "Export"); FLOPs, exports and ONNX Runtime are unchanged.

    python benchmarks/onnx_speed.py --backbone crepe-full --input-seconds 0.064 --ratios 0.5 0.75 \
        --json benchmarks/results/onnx_speed_crepe-full.json
    python benchmarks/onnx_speed.py --backbone clap-cnn14 --input-seconds 4 --ratios 0.25 0.5 0.75 --multiple-of 16 \
        --repeats 30 --warm-block 10 --json benchmarks/results/onnx_speed_x16_clap-cnn14.json
    python benchmarks/onnx_speed.py --report benchmarks/results/onnx_speed.md benchmarks/results/onnx_speed_*.json
"""
from __future__ import annotations

import argparse
import copy
import functools
import platform
import sys
import tempfile
from pathlib import Path

import torch

from kwyn import export, profile, timing
from kwyn.backbones import build_backbone, load_backbone
from kwyn.heads import MLPHead
from kwyn.io import write_json
from kwyn.model import TaskModel
from kwyn.trim import load_trimmed, trim_model

from speedup import keep_for_ratio  # the masks of benchmarks/speedup.py (benchmarks/ is on sys.path as a script)


def with_head(backbone, classes: int = 10) -> TaskModel:
    return TaskModel(backbone.requires_grad_(False), MLPHead(backbone.embedding_dim, classes)).eval()


def models_from_ratios(name: str, ratios: list[float], seed: int, pretrained: bool,
                       multiple_of: int = 1) -> dict[str, TaskModel]:
    full = load_backbone(name, pretrained=pretrained)
    models = {"full": with_head(full)}
    for ratio in ratios:
        trimmed = trim_model(load_backbone(name, pretrained=pretrained), keep_for_ratio(full, ratio, seed, multiple_of))
        models[f"{ratio:g}"] = with_head(trimmed)
    return models


def onednn_linears(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every Linear layer that has units run by oneDNN (torch.utils.mkldnn.MkldnnLinear, the same fp32
    product) instead of PyTorch's default BLAS, MKL, whose fp32 GEMM runs at about half oneDNN's rate on this AMD
    CPU. A Linear trimmed to no unit stays: oneDNN has no empty inner product. The model is changed in place."""
    from torch.utils.mkldnn import MkldnnLinear

    for name, child in model.named_children():
        if isinstance(child, torch.nn.Linear) and child.in_features and child.out_features:
            setattr(model, name, MkldnnLinear(child, torch.float))
        else:
            onednn_linears(child)
    return model


@torch.no_grad()
def torch_warm_ms(models: dict[str, TaskModel], example: torch.Tensor, repeats: int, warmup: int, threads: int,
                  block: int) -> dict[str, float]:
    """kwyn.timing.median_ms of the PyTorch models in blocks of `block` runs (kwyn.profile.latency_ms alternates)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return timing.median_ms({key: functools.partial(model, example) for key, model in models.items()},
                                repeats, warmup, block)
    finally:
        torch.set_num_threads(previous)


def models_from_dirs(dirs: list[str]) -> dict[str, TaskModel]:
    trimmed = {Path(d).name: load_trimmed(d) for d in dirs}
    first = next(iter(trimmed.values()))
    models = {"full": TaskModel(build_backbone(first.config["backbone"]), first.head).eval()}
    return {**models, **trimmed}


COLUMNS = [("backbone", "model"), ("removed", "removed"), ("flops_ratio", "FLOPs ratio"),
           ("torch_ms", "PyTorch ms"), ("ort_ms", "ORT ms"), ("ort_int8_ms", "ORT int8 ms"),
           ("torch_speedup", "speed-up PyTorch"), ("ort_speedup", "speed-up ORT"),
           ("ort_int8_speedup", "speed-up ORT int8"), ("ort_vs_torch", "ORT / PyTorch"),
           ("size_mb", "MB (fp32 params)"), ("onnx_mb", "ONNX MB"), ("onnx_int8_mb", "ONNX int8 MB")]
WARM_COLUMNS = [("torch_warm_ms", "PyTorch warm ms"), ("ort_warm_ms", "ORT warm ms"),
                ("torch_warm_speedup", "speed-up PyTorch warm"), ("ort_warm_speedup", "speed-up ORT warm")]
# speed-up / FLOPs ratio (how far a trimmed model's time follows its FLOPs), per runtime and timing
RATIO_COLUMNS = [("torch_speedup", "PyTorch / FLOPs"), ("ort_speedup", "ORT / FLOPs"),
                 ("torch_warm_speedup", "PyTorch warm / FLOPs"), ("ort_warm_speedup", "ORT warm / FLOPs")]


def report(out: str, json_files: list[str]) -> str:
    """The markdown table of onnx_speed JSON files (one row per model), written to `out`."""
    import json

    rows = [row for path in json_files for row in json.loads(Path(path).read_text())]
    warm = [c for c in WARM_COLUMNS if any(c[0] in row for row in rows)]
    ratios = [c for c in RATIO_COLUMNS if any(c[0] in row for row in rows)]
    titles = [title for _, title in COLUMNS + warm + ratios]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells = [f"{row['backbone']} {row['model']} ({row['input_seconds']:g} s)"]
        cells += [f"{100 * row['removed']:.1f} %"] + [f"{row[key]:g}" for key, _ in COLUMNS[2:]]
        cells += [f"{row[key]:g}" if key in row else "" for key, _ in warm]
        cells += [f"{row[key] / row['flops_ratio']:.2f}" if key in row else "" for key, _ in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(out).write_text(text)
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        print(report(argv[1], argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="a registered backbone, trimmed at --ratios by random masks")
    source.add_argument("--models", nargs="+", help="trimmed model directories (models/<exp>) of one backbone")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--input-seconds", type=float, required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--multiple-of", type=int, default=1, help="conv/FFN widths kept in multiples of this")
    parser.add_argument("--warm-block", type=int, default=0,
                        help="also time PyTorch and ONNX Runtime fp32 warm, in blocks of this many runs (0: no)")
    parser.add_argument("--torch-linear", choices=["default", "onednn"], default="default",
                        help="the PyTorch models' Linear layers on PyTorch's default BLAS or on oneDNN")
    parser.add_argument("--int8-ops", nargs="+", default=list(export.INT8_OPS))
    parser.add_argument("--crepe-conv2d", action="store_true",
                        help="CREPE's (k, 1) convolutions computed (and exported) as torchcrepe's conv2d instead of "
                             "kwyn's conv1d, so that ONNX Runtime may block them (an experiment: README \"Export\")")
    args = parser.parse_args(argv)
    if args.crepe_conv2d:
        import kwyn.backbones.crepe as crepe

        crepe._conv_height = lambda conv, x: conv(x)  # the same numbers, as one 2-D convolution per layer
    torch.manual_seed(args.seed)
    models = (models_from_ratios(args.backbone, args.ratios, args.seed, args.pretrained, args.multiple_of) if args.backbone
              else models_from_dirs(args.models))
    name = args.backbone or models["full"].backbone.config["family"]
    example = models["full"].backbone.example_input(args.input_seconds, 1)

    with tempfile.TemporaryDirectory() as tmp:
        files, sessions = {}, {}
        for key, model in models.items():
            fp32 = export.export_onnx(model, Path(tmp) / f"{key}.onnx", seconds=args.input_seconds)
            int8 = export.quantize_int8(fp32, Path(tmp) / f"{key}.int8.onnx", tuple(args.int8_ops))
            files[key] = {"fp32": export.file_size_mb(fp32), "int8": export.file_size_mb(int8)}
            sessions[f"{key}/fp32"] = export.onnx_session(fp32, args.threads)
            sessions[f"{key}/int8"] = export.onnx_session(int8, args.threads)
        timed = models
        if args.torch_linear == "onednn":
            timed = {key: onednn_linears(copy.deepcopy(model)) for key, model in models.items()}
            with torch.no_grad():
                gap = max((timed[key](example) - model(example)).abs().max().item() for key, model in models.items())
            if gap > export.ATOL:
                raise RuntimeError(f"oneDNN Linear layers changed the outputs by {gap:.2e} (> {export.ATOL})")
        torch_ms = profile.latency_ms(timed, example, args.repeats, args.warmup, args.threads)
        ort_ms = export.onnx_latency_ms(sessions, example.numpy(), args.repeats, args.warmup)
        if args.warm_block:
            torch_warm = torch_warm_ms(timed, example, args.repeats, args.warmup, args.threads, args.warm_block)
            ort_warm = export.onnx_latency_ms({key: sessions[f"{key}/fp32"] for key in models}, example.numpy(),
                                              args.repeats, args.warmup, args.warm_block)
        int8_diff = {key: export.max_abs_diff_onnx(sessions[f"{key}/int8"], model, example)
                     for key, model in models.items()}

    full_cost = profile.cost(models["full"].backbone, example)
    full_params = full_cost["params"]
    rows = []
    for key, model in models.items():
        cost = profile.cost(model.backbone, example)
        row = {"backbone": name, "model": key, "input_seconds": args.input_seconds,
               "removed": round(1 - cost["params"] / full_params, 4), "params": cost["params"],
               "size_mb": cost["size_mb"], "onnx_mb": round(files[key]["fp32"], 3),
               "onnx_int8_mb": round(files[key]["int8"], 3), "gflops": round(cost["gflops"], 4),
               "flops_ratio": round(full_cost["gflops"] / cost["gflops"], 3),
               "torch_ms": round(torch_ms[key], 3), "ort_ms": round(ort_ms[f"{key}/fp32"], 3),
               "ort_int8_ms": round(ort_ms[f"{key}/int8"], 3),
               "torch_speedup": round(torch_ms["full"] / torch_ms[key], 3),
               "ort_speedup": round(ort_ms["full/fp32"] / ort_ms[f"{key}/fp32"], 3),
               "ort_int8_speedup": round(ort_ms["full/fp32"] / ort_ms[f"{key}/int8"], 3),
               "ort_vs_torch": round(torch_ms[key] / ort_ms[f"{key}/fp32"], 3),
               "int8_max_abs_diff": round(int8_diff[key], 5), "int8_ops": args.int8_ops,
               "batch": 1, "threads": args.threads, "repeats": args.repeats, "torch_linear": args.torch_linear,
               **({"warm_block": args.warm_block, "torch_warm_ms": round(torch_warm[key], 3),
                   "ort_warm_ms": round(ort_warm[key], 3),
                   "torch_warm_speedup": round(torch_warm["full"] / torch_warm[key], 3),
                   "ort_warm_speedup": round(ort_warm["full"] / ort_warm[key], 3)} if args.warm_block else {}),
               "machine": platform.processor() or platform.machine()}
        rows.append(row)
        print({k: row[k] for k in ("model", "removed", "flops_ratio", "torch_ms", "ort_ms", "ort_int8_ms",
                                   "torch_speedup", "ort_speedup", "ort_int8_speedup", "onnx_mb", "onnx_int8_mb",
                                   "torch_warm_speedup", "ort_warm_speedup") if k in row})
    write_json(args.json, rows)


if __name__ == "__main__":
    main()

"""Which convolutions ONNX Runtime runs in its blocked (NCHWc) layout, full model against trimmed ones, per width rounding.

On x86 CPUs with AVX2 or AVX-512, ONNX Runtime's graph optimiser moves a convolution to its blocked layout (its
fastest convolution path) only where the channel counts are multiples of its block, 8 or 16 channels; the others
run as im2col + GEMM, with reorders at the boundaries. Trimming changes channel counts, so it can move convolutions
out of the blocked layout, and the trimmed model loses more time than its FLOPs say (README "Export": the ONNX
speed-up / FLOPs ratio). This script counts it (kwyn.export.conv_layout on the optimised graph; no timing, so it
needs no idle machine): the backbone trimmed by benchmarks/speedup.py's uniform random masks at --ratios, with
widths rounded to each of --multiples (sparsity.multiple_of).

    python benchmarks/ort_layout.py --backbones clap-cnn14 crepe-full --json benchmarks/results/ort_layout.json \
        --report benchmarks/results/ort_layout.md
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

from kwyn import export
from kwyn.backbones import load_backbone
from kwyn.io import write_json
from kwyn.trim import trim_model

from onnx_speed import with_head  # benchmarks/ is on sys.path as a script
from speedup import keep_for_ratio

SECONDS = {"crepe-full": 0.064}  # the default grid's CREPE input: one frame; the others at 1 s


def layouts(backbone: str, ratios: list[float], multiples: list[int], seed: int = 0) -> list[dict]:
    full = load_backbone(backbone, pretrained=False)
    seconds = SECONDS.get(backbone, 1.0)
    models = {("full", 1): with_head(full)}
    for multiple in multiples:
        for ratio in ratios:
            keep = keep_for_ratio(full, ratio, seed, multiple)
            models[(f"{ratio:g}", multiple)] = with_head(trim_model(load_backbone(backbone, pretrained=False), keep))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (ratio, multiple), model in models.items():
            path = export.export_onnx(model, Path(tmp) / f"{ratio}_{multiple}.onnx", seconds=seconds)
            layout = export.conv_layout(path)
            rows.append({"backbone": backbone, "model": ratio, "multiple_of": multiple,
                         "removed": round(1 - model.backbone.param_count() / full.param_count(), 4), **layout,
                         "machine": platform.processor() or platform.machine()})
            print(rows[-1], flush=True)
            path.unlink()  # now, not with the folder: 13 exports of MusicFM would hold 10 GB at once
    return rows


def report(rows: list[dict]) -> str:
    lines = ["| model | widths | removed | convolutions | blocked (NCHWc) | layout conversions |", "|---|---|---|---|---|---|"]
    for r in rows:
        widths = "full" if r["model"] == "full" else ("any" if r["multiple_of"] == 1 else f"x{r['multiple_of']}")
        lines.append(f"| {r['backbone']} {r['model']} | {widths} | {100 * r['removed']:.1f} % | {r['convs']} | "
                     f"{r['blocked']} | {r['reorders']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", required=True)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--json", required=True)
    parser.add_argument("--report", help="also write the markdown table here")
    args = parser.parse_args(argv)
    rows = [row for backbone in args.backbones for row in layouts(backbone, args.ratios, args.multiples)]
    write_json(args.json, rows)
    if args.report:
        Path(args.report).write_text(report(rows))
    print(report(rows))


if __name__ == "__main__":
    main()

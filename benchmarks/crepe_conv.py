"""Why CREPE's (k, 1) convolutions run as kwyn's conv1d (kwyn/backbones/crepe.py, _HeightConv).

For each of CREPE-full's six conv layers, the median time of the same convolution computed as
torchcrepe does (conv2d on (batch, channels, height, 1)), as torch's conv1d over height, and as
kwyn's _HeightConv (conv1d whose gradient to the input is a conv1d by the flipped kernel where
that is faster), three ways: forward only (evaluation, a frozen encoder's forward), forward +
gradient to the input (mask training, where only activations need gradients) and forward +
gradients to input and weight (fine-tuning: scratch, lottery).

    python benchmarks/crepe_conv.py --json benchmarks/results/crepe_conv.json
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from train_step import median_step  # benchmarks/ is on sys.path when this runs as a script

from kwyn.backbones.crepe import FRAME, KERNELS, PADDING, STRIDES, WIDTHS, _HeightConv
from kwyn.io import write_json

CPU = torch.device("cpu")


def layer_shapes(capacity: str):
    """(in channels, out channels, kernel, stride, padded input height) of each conv layer."""
    widths, height, shapes = WIDTHS[capacity], FRAME, []
    in_channels = [1] + widths[:-1]
    for i in range(6):
        pad = PADDING[i][2] + PADDING[i][3]
        shapes.append((in_channels[i], widths[i], KERNELS[i], STRIDES[i], height + pad))
        height = ((height + pad - KERNELS[i]) // STRIDES[i] + 1) // 2  # conv, then the max-pool's halving
    return shapes


def time_layer(c_in, c_out, kernel, stride, height, batch, mode, repeats, warmup):
    weight = torch.randn(c_out, c_in, kernel, 1) / (c_in * kernel) ** 0.5
    x2 = torch.randn(batch, c_in, height, 1)
    x1, w1 = x2[..., 0].contiguous(), weight[..., 0].contiguous()

    def run(conv, x, w):
        x = x.detach().requires_grad_(mode != "forward")
        w = w.detach().requires_grad_(mode == "input+weight grad")
        if mode == "forward":
            with torch.no_grad():
                return conv(x, w)
        conv(x, w).sum().backward()

    as_2d = median_step(lambda: run(lambda x, w: F.conv2d(x, w, stride=(stride, 1)), x2, weight), repeats, warmup, CPU)
    as_1d = median_step(lambda: run(lambda x, w: F.conv1d(x, w, stride=stride), x1, w1), repeats, warmup, CPU)
    kwyn = median_step(lambda: run(lambda x, w: _HeightConv.apply(x, w, None, stride), x1, w1), repeats, warmup, CPU)
    return as_2d, as_1d, kwyn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--capacity", default="full", choices=sorted(WIDTHS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for mode, batch in [("forward", 32), ("input grad", 8), ("input+weight grad", 8)]:
        totals = [0.0, 0.0, 0.0]
        for i, (c_in, c_out, kernel, stride, height) in enumerate(layer_shapes(args.capacity), start=1):
            if mode != "forward" and i == 1:
                continue  # conv1 reads the audio, which needs no gradient
            times = time_layer(c_in, c_out, kernel, stride, height, batch, mode, args.repeats, args.warmup)
            totals = [t + s for t, s in zip(totals, times)]
            rows.append(_row(mode, batch, f"conv{i}", times))
        rows.append(_row(mode, batch, "all", totals))
        print(rows[-1])
    write_json(args.json, {"capacity": args.capacity, "threads": args.threads, "repeats": args.repeats,
                           "rows": rows})


def _row(mode, batch, layer, times):
    as_2d, as_1d, kwyn = times
    return {"mode": mode, "batch": batch, "layer": layer, "conv2d_s": round(as_2d, 5), "conv1d_s": round(as_1d, 5),
            "kwyn_s": round(kwyn, 5), "conv2d_over_kwyn": round(as_2d / kwyn, 2)}


if __name__ == "__main__":
    main()

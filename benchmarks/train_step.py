"""Median time of one training step, three ways, on the same batch:
  mask_step_s      frozen encoder + unit masks + head (kwyn): gradients reach masks and head only
  probe_step_s     head only, on cached embeddings (linear probing)
  finetune_step_s  every encoder weight trainable + head

    python benchmarks/train_step.py --backbone crepe-full --json benchmarks/results/train_step_crepe-full.json
    python benchmarks/train_step.py --backbone wav2vec2-base --device cuda --precision bf16 --input-seconds 4 \
        --json benchmarks/results/train_step_wav2vec2-base_cuda.json     # GPU step times for grid_cost.py
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from kwyn.backbones import load_backbone
from kwyn.heads import MLPHead
from kwyn.io import write_json
from kwyn.masks import MaskSet, sparsity_loss


def median_step(step, repeats: int, warmup: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # GPU work is asynchronous
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--input-seconds", type=float, default=None, help="default: 1 s (CREPE: one 64 ms frame)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=37)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast dtype (fp16: cuda only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    backbone = load_backbone(args.backbone, pretrained=False).to(device)
    seconds = args.input_seconds or (0.064 if backbone.family == "crepe" else 1.0)
    audio = backbone.example_input(seconds, args.batch).to(device)
    labels = torch.randint(args.classes, (args.batch,)).to(device)
    head = MLPHead(backbone.embedding_dim, args.classes).to(device)

    backbone.requires_grad_(False)
    masks = MaskSet(backbone.mask_sites()).to(device)
    handles = [m.attach(backbone) for m in masks.values()]
    mask_opt = torch.optim.Adam([*head.parameters(), *masks.parameters()], lr=1e-3)

    def mask_step():
        with autocast():
            loss = F.cross_entropy(head(backbone.embed(audio)), labels) + sparsity_loss("paper", masks.logits(), 0.5)
        mask_opt.zero_grad()
        loss.backward()
        mask_opt.step()

    mask_s = median_step(mask_step, args.repeats, args.warmup, device)
    for handle in handles:
        handle.remove()

    with torch.no_grad(), autocast():
        cached = backbone.embed(audio).float()
    probe_opt = torch.optim.Adam(head.parameters(), lr=1e-3)

    def probe_step():
        loss = F.cross_entropy(head(cached), labels)
        probe_opt.zero_grad()
        loss.backward()
        probe_opt.step()

    probe_s = median_step(probe_step, args.repeats, args.warmup, device)

    backbone.requires_grad_(True)
    finetune_opt = torch.optim.Adam([*head.parameters(), *backbone.parameters()], lr=1e-4)

    def finetune_step():
        with autocast():
            loss = F.cross_entropy(head(backbone.embed(audio)), labels)
        finetune_opt.zero_grad()
        loss.backward()
        finetune_opt.step()

    finetune_s = median_step(finetune_step, args.repeats, args.warmup, device)
    row = {"backbone": args.backbone, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "precision": args.precision, "input_seconds": seconds, "batch": args.batch, "threads": args.threads,
           "repeats": args.repeats, "mask_step_s": round(mask_s, 5), "probe_step_s": round(probe_s, 6),
           "finetune_step_s": round(finetune_s, 5), "mask_over_finetune": round(mask_s / finetune_s, 3)}
    print(row)
    write_json(args.json, row)


if __name__ == "__main__":
    main()

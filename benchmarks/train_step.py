"""Median time of one training step, three ways, on the same batch:
  mask_step_s      frozen encoder + unit masks + head (kwyn): gradients reach masks and head only
  probe_step_s     head only, on cached embeddings (linear probing)
  finetune_step_s  every encoder weight trainable + head

    python benchmarks/train_step.py --backbone crepe-full --json benchmarks/results/train_step_crepe-full.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kwyn.backbones import load_backbone
from kwyn.heads import MLPHead
from kwyn.io import write_json
from kwyn.masks import MaskSet, sparsity_loss


def median_step(step, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone = load_backbone(args.backbone, pretrained=False)
    seconds = args.input_seconds or (0.064 if backbone.family == "crepe" else 1.0)
    audio = backbone.example_input(seconds, args.batch)
    labels = torch.randint(args.classes, (args.batch,))
    head = MLPHead(backbone.embedding_dim, args.classes)

    backbone.requires_grad_(False)
    masks = MaskSet(backbone.mask_sites())
    handles = [m.attach(backbone) for m in masks.values()]
    mask_opt = torch.optim.Adam([*head.parameters(), *masks.parameters()], lr=1e-3)

    def mask_step():
        loss = F.cross_entropy(head(backbone.embed(audio)), labels) + sparsity_loss("paper", masks.logits(), 0.5)
        mask_opt.zero_grad()
        loss.backward()
        mask_opt.step()

    mask_s = median_step(mask_step, args.repeats, args.warmup)
    for handle in handles:
        handle.remove()

    with torch.no_grad():
        cached = backbone.embed(audio)
    probe_opt = torch.optim.Adam(head.parameters(), lr=1e-3)

    def probe_step():
        loss = F.cross_entropy(head(cached), labels)
        probe_opt.zero_grad()
        loss.backward()
        probe_opt.step()

    probe_s = median_step(probe_step, args.repeats, args.warmup)

    backbone.requires_grad_(True)
    finetune_opt = torch.optim.Adam([*head.parameters(), *backbone.parameters()], lr=1e-4)

    def finetune_step():
        loss = F.cross_entropy(head(backbone.embed(audio)), labels)
        finetune_opt.zero_grad()
        loss.backward()
        finetune_opt.step()

    finetune_s = median_step(finetune_step, args.repeats, args.warmup)
    row = {"backbone": args.backbone, "input_seconds": seconds, "batch": args.batch, "threads": args.threads,
           "repeats": args.repeats, "mask_step_s": round(mask_s, 5), "probe_step_s": round(probe_s, 6),
           "finetune_step_s": round(finetune_s, 5), "mask_over_finetune": round(mask_s / finetune_s, 3)}
    print(row)
    write_json(args.json, row)


if __name__ == "__main__":
    main()

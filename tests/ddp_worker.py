"""A few optimizer steps of a small frozen-encoder + head model through kwyn.distributed.

Run alone it trains on the full global batch; under torchrun each rank trains on its shard and DDP
averages the gradients, which must give the same parameters (tests/test_distributed.py):

    python tests/ddp_worker.py --out OUT
    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py --out OUT

Every rank writes OUT/rank<r>.pt: {"state": head + encoder parameters, "world_size", "mean_rank"}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kwyn import distributed

EXAMPLES, FEATURES, HIDDEN, CLASSES, GLOBAL_BATCH = 16, 6, 8, 3, 8


def build_model() -> nn.Module:
    torch.manual_seed(0)
    encoder = nn.Linear(FEATURES, HIDDEN)
    encoder.requires_grad_(False)  # frozen, like the pretrained encoder: DDP leaves it alone
    return nn.Sequential(encoder, nn.Tanh(), nn.Linear(HIDDEN, CLASSES))


def run(runtime: distributed.Runtime, steps: int, optimizer: str) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(EXAMPLES, FEATURES, generator=generator)
    y = torch.randint(CLASSES, (EXAMPLES,), generator=generator)
    model = distributed.wrap(build_model().to(runtime.device), runtime)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=0.05) if optimizer == "adam" else torch.optim.SGD(trainable, lr=0.5)
    for step in range(steps):
        order = torch.randperm(EXAMPLES, generator=torch.Generator().manual_seed(100 + step)).tolist()
        idx = distributed.shard(order[:GLOBAL_BATCH], runtime)
        with distributed.autocast(runtime):
            loss = F.cross_entropy(model(x[idx].to(runtime.device)), y[idx].to(runtime.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return distributed.unwrap(model)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runtime = distributed.setup(args.device, args.precision)
    model = run(runtime, args.steps, args.optimizer)
    mean_rank = distributed.all_reduce_mean(runtime.rank, runtime)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "world_size": runtime.world_size, "mean_rank": mean_rank},
               args.out / f"rank{runtime.rank}.pt")
    distributed.barrier(runtime)
    distributed.cleanup(runtime)


if __name__ == "__main__":
    main()

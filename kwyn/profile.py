"""Cost of a model: parameters, size, FLOPs/MACs and latency, measured the same way for every method.

- size_mb: parameters x 4 bytes (fp32), in MB (10^6 bytes), as the paper's Table II.
- FLOPs from torch.utils.flop_counter.FlopCounterMode (counted at the dispatcher; FLOPs = 2 x MACs),
  always with the input length they were measured at, attention counted (see eager_attention).
- latency: median over `repeats` runs after `warmup` runs, a fixed thread count, and the models
  alternated run by run in one process so that machine noise hits them alike.
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    return param_count(model) * 4 / 1e6


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Route transformers attention through its eager path while counting.

    The CPU kernels behind scaled_dot_product_attention have no FLOP formula, so with the default
    ("sdpa") the attention matmuls would go uncounted; eager attention computes the same thing
    with plain matmuls, which are counted.
    """
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation")}
    before = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


@torch.no_grad()
def flops(model: nn.Module, example: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with eager_attention(model), counter:
        model(example)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency_ms(models: dict[str, nn.Module], example: torch.Tensor, repeats: int = 30, warmup: int = 5,
               threads: int = 1) -> dict[str, float]:
    """Median wall time per forward pass of each model, alternating models run by run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for model in models.values():
                model(example)
        times = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(example)
                times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return {name: statistics.median(t) for name, t in times.items()}


def cost(model: nn.Module, example: torch.Tensor) -> dict:
    total = flops(model, example)
    return {"params": param_count(model), "size_mb": round(size_mb(model), 3),
            "gflops": total / 1e9, "gmacs": total / 2e9}

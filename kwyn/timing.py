"""Median wall time of several models measured side by side, cold (alternated run by run) or warm (in blocks).

Latency comparisons in kwyn (full against trimmed encoders; PyTorch against ONNX Runtime) time every model in
one process, interleaved, so that a slow spell of a shared machine falls on all of them alike. How they are
interleaved decides what is measured:

- `block=1`, models alternated run by run: every run starts on the caches the previous model left, so its
  weights come from memory. This is what the grid's evaluate stage measures (`kwyn.profile.latency_ms`).
- `block=N`, each model runs N + 1 times in a row, the first of them untimed: the N timed runs start on the
  caches their own model left, as for a model serving requests back to back. A trimmed model whose weights
  fit in the CPU's last-level cache gains here beyond its FLOPs (CREPE-full at 75 % removed holds 21 MB of
  weights; README "Export" has the measurements).

    ms = median_ms({"full": lambda: full(x), "trimmed": lambda: trimmed(x)}, repeats=30, block=10)
    ms["full"] / ms["trimmed"]  # speed-up, warm
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


def median_ms(runs: dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 5, block: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds per call of each of `runs`, over `repeats` timed calls each.

    `warmup` untimed calls of each come first, alternated. Then the timed calls come in rounds; in a round each
    model gets `block` timed calls in a row, preceded (when `block` > 1) by one untimed call that puts its own
    weights back in the caches. `clock` returns seconds (time.perf_counter; tests pass their own).
    """
    if repeats < 1 or block < 1 or warmup < 0:
        raise ValueError(f"median_ms needs repeats >= 1, block >= 1 and warmup >= 0; got repeats={repeats}, "
                         f"block={block}, warmup={warmup}")
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(math.ceil(repeats / block)):
        for name, run in runs.items():
            if block > 1:
                run()
            for _ in range(min(block, repeats - len(times[name]))):
                start = clock()
                run()
                times[name].append((clock() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}

"""Where the wall time of a `dvc repro` went, from the executed notebooks it left under executed/.

papermill records each notebook's start, end and duration, and each cell's duration. This sums
them per backbone and stage kind, and measures the gaps between one notebook's end and the next
one's start (DVC's own work and papermill's start-up, outside any notebook), and the time inside
papermill's duration spent in no cell (the kernel's start).

    make repro && python benchmarks/repro_time.py --json benchmarks/results/repro_time.json
"""
from __future__ import annotations

import argparse
import collections
import json
from datetime import datetime
from pathlib import Path

from kwyn.io import write_json

ROOT = Path(__file__).resolve().parent.parent


def notebook_times(path: Path) -> dict | None:
    """Start, end and durations of a finished notebook; None for one still running (or stopped by an
    error), which papermill leaves without an end time."""
    notebook = json.loads(path.read_text())
    meta = notebook["metadata"]["papermill"]
    if not meta.get("end_time"):
        return None
    cell_seconds = sum(c["metadata"].get("papermill", {}).get("duration") or 0.0
                       for c in notebook["cells"] if c["cell_type"] == "code")
    return {"start": datetime.fromisoformat(meta["start_time"]), "end": datetime.fromisoformat(meta["end_time"]),
            "seconds": meta["duration"], "outside_cells_seconds": meta["duration"] - cell_seconds}


def group(path: Path) -> str:
    stage, name = path.parent.name, path.stem
    if stage == "executed":
        return "report"
    if stage.startswith("01"):
        return "data"
    return name.split("_")[0]  # the experiment's short backbone name: crepe, whisper, ...


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executed", type=Path, default=ROOT / "executed")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    paths = sorted(args.executed.rglob("*.ipynb"))
    if not paths:
        raise SystemExit(f"no executed notebooks under {args.executed}: run `dvc repro` first")
    times = {p: notebook_times(p) for p in paths}
    unfinished = [p for p, t in times.items() if t is None]  # counted, not timed
    runs = sorted(((t, p) for p, t in times.items() if t is not None), key=lambda r: r[0]["start"])
    if not runs:
        raise SystemExit(f"no finished notebook under {args.executed}: wait for `dvc repro`")
    by_group, by_stage = collections.defaultdict(float), collections.defaultdict(float)
    for times, path in runs:
        by_group[group(path)] += times["seconds"]
        by_stage[path.parent.name if path.parent.name != "executed" else path.stem] += times["seconds"]
    gaps = [(b["start"] - a["end"]).total_seconds() for (a, _), (b, _) in zip(runs, runs[1:])]
    first, last = runs[0][0]["start"], runs[-1][0]["end"]
    result = {
        "notebooks": len(runs),
        "unfinished": [str(p.relative_to(args.executed)) for p in unfinished],
        "first_start_to_last_end_s": round((last - first).total_seconds(), 1),
        "notebooks_s": round(sum(t["seconds"] for t, _ in runs), 1),
        "between_notebooks_s": round(sum(gaps), 1),
        "median_gap_s": round(sorted(gaps)[len(gaps) // 2], 2) if gaps else None,
        # a pause (a failed stage, `dvc repro` started again) shows as one long gap: what to subtract, and where
        "longest_gap_s": round(max(gaps), 1) if gaps else None,
        "longest_gap_after": (str(runs[gaps.index(max(gaps))][1].relative_to(args.executed)) if gaps else None),
        # inside papermill's duration but in no cell: the kernel's start and shutdown
        "kernel_start_s": round(sum(t["outside_cells_seconds"] for t, _ in runs), 1),
        "by_group_s": {k: round(v, 1) for k, v in sorted(by_group.items())},
        "by_stage_s": {k: round(v, 1) for k, v in sorted(by_stage.items())},
        "lottery_s": round(sum(t["seconds"] for t, p in runs if "lottery" in p.stem), 1),
        "scratch_s": {g: round(sum(t["seconds"] for t, p in runs if "scratch" in p.stem and group(p) == g), 1)
                      for g in sorted({group(p) for _, p in runs if "scratch" in p.stem})},
        "per_notebook_s": {str(p.relative_to(args.executed)): round(t["seconds"], 1) for t, p in runs},
    }
    print(json.dumps(result, indent=2))
    write_json(args.json, result)


if __name__ == "__main__":
    main()

"""Whether two sets of evaluate-stage results are the same science: every metrics/<experiment>.json key compared,
timings left out (they move with the machine's load), floats within a relative tolerance.

What a refactor must leave unchanged (issue G: "every metrics/*.json of the default grid is unchanged"):

    python scripts/compare_metrics.py --before-rev 1be4653 --after metrics --json benchmarks/results/refactor_metrics.json
    python scripts/compare_metrics.py --before /tmp/old/metrics --after metrics

What a change of the science did, configuration by configuration (seeds averaged: removed share, validation score
of the selected checkpoint, test score with its min-max), for the experiments whose names start with --only:

    python scripts/compare_metrics.py --before-rev 51e02bc --after metrics --only crepe_ --scores benchmarks/results/precision_grid.md

Exit status 0 when every experiment present on both sides agrees; the JSON lists, per experiment, the keys that
differ (before, after), and the experiments found on one side only.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from kwyn.report import config_name

TIMINGS = {"latency_ms", "full_latency_ms", "speedup"}  # measured wall-clock: noise, not results


def read_rev(rev: str, folder: str = "metrics") -> dict[str, dict]:
    """The metrics/*.json files as committed at git revision `rev`."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{folder}"], capture_output=True, text=True,
                           check=True).stdout.split()
    return {Path(n).stem: json.loads(subprocess.run(["git", "show", f"{rev}:{folder}/{n}"], capture_output=True,
                                                    text=True, check=True).stdout)
            for n in names if n.endswith(".json")}


def read_dir(folder: str | Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


def differences(before, after, rel: float, path: str = "") -> list[tuple[str, object, object]]:
    """(key path, before, after) of every leaf that differs, timings excepted."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after), key=str):
            if key in TIMINGS:
                continue
            out += differences(before.get(key), after.get(key), rel, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, rel, f"{path}[{i}]")]
    if isinstance(before, float) and isinstance(after, float):
        same = math.isclose(before, after, rel_tol=rel, abs_tol=1e-12) or (math.isnan(before) and math.isnan(after))
        return [] if same else [(path, before, after)]
    return [] if before == after else [(path, before, after)]


def compare(before: dict[str, dict], after: dict[str, dict], rel: float = 1e-9) -> dict:
    common = sorted(set(before) & set(after))
    differing = {name: [{"key": k, "before": b, "after": a} for k, b, a in differences(before[name], after[name], rel)]
                 for name in common}
    return {"compared": len(common), "identical": sum(not d for d in differing.values()),
            "differing": {name: d for name, d in differing.items() if d},
            "only_before": sorted(set(before) - set(after)), "only_after": sorted(set(after) - set(before)),
            "ignored_keys": sorted(TIMINGS), "rel_tol": rel}


def score_table(before: dict[str, dict], after: dict[str, dict], labels=("before", "after")) -> str:
    """A markdown table, one row per configuration found on both sides: seeds, removed %, val (selected) and test
    (mean [min-max]) before and after."""
    def side(results: dict[str, dict], config: str) -> dict:
        runs = [r for name, r in results.items() if config_name(name) == config]
        tests = [r["test"][r["metric"]] for r in runs]
        return {"seeds": len(runs), "removed": 100 * statistics.mean(r["trim_ratio"] for r in runs),
                "val": statistics.mean(r["val_metric"] for r in runs),
                "test": f"{statistics.mean(tests):.3f} [{min(tests):.3f}-{max(tests):.3f}]"}

    configs = sorted({config_name(n) for n in before} & {config_name(n) for n in after})
    a, b = labels
    lines = [f"| configuration | seeds | removed % {a} | removed % {b} | val {a} | val {b} | test {a} | test {b} |",
             "|---|---|---|---|---|---|---|---|"]
    for config in configs:
        x, y = side(before, config), side(after, config)
        lines.append(f"| {config} | {y['seeds']} | {x['removed']:.1f} | {y['removed']:.1f} | {x['val']:.3f} | "
                     f"{y['val']:.3f} | {x['test']} | {y['test']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    side = parser.add_mutually_exclusive_group(required=True)
    side.add_argument("--before", help="a folder of metrics/*.json")
    side.add_argument("--before-rev", help="a git revision whose committed metrics/ to read")
    parser.add_argument("--after", required=True, help="a folder of metrics/*.json")
    parser.add_argument("--rel", type=float, default=1e-9, help="relative tolerance for floats")
    parser.add_argument("--json", help="write the comparison here")
    parser.add_argument("--only", default="", help="compare the experiments whose names start with this")
    parser.add_argument("--scores", help="write the per-configuration score table (markdown) here")
    parser.add_argument("--labels", nargs=2, default=["before", "after"], help="the two sides' names in --scores")
    args = parser.parse_args(argv)
    before = read_rev(args.before_rev) if args.before_rev else read_dir(args.before)
    after = read_dir(args.after)
    before, after = ({k: v for k, v in d.items() if k.startswith(args.only)} for d in (before, after))
    result = compare(before, after, args.rel)
    if args.scores:
        Path(args.scores).write_text(score_table(before, after, args.labels))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{result['identical']} of {result['compared']} experiments identical (timings left out); "
          f"only before: {len(result['only_before'])}, only after: {len(result['only_after'])}")
    for name, diffs in result["differing"].items():
        print(f"  {name}: " + ", ".join(f"{d['key']} {d['before']!r} -> {d['after']!r}" for d in diffs[:4])
              + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""))
    return 0 if not result["differing"] else 1


if __name__ == "__main__":
    sys.exit(main())

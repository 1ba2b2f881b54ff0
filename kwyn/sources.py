"""Source fingerprints: one small file standing for the kwyn modules that a group of dvc.yaml stages runs.

Every train and trim stage runs about 25 kwyn modules, and a change to any of them must rerun it
(tests/test_pipeline.py checks that none is missing). Listed in each of the grid's 94 train and trim
stages, they were two thirds of dvc.lock (16,600 lines), and DVC parses and rewrites the whole lock
with a pure-Python YAML round trip after every stage it runs: 3.1 s a stage for that lock, 1.3 s for
the lock without them (benchmarks/stage_overheads.py --compare-locks). So each group lists its modules once, as the deps
of a `sources_<group>` stage whose command is this module: it writes `fingerprints/<group>.json`, the
MD5 of every file those deps hold, and the group's stages depend on that one file. A change to a
listed module changes the fingerprint and reruns the group; a change elsewhere in kwyn reruns
nothing but the fingerprint stage, whose unchanged output stops DVC there.

    python -m kwyn.sources sources_train     # what dvc.yaml's stage sources_train runs
    fingerprint(["kwyn/masks.py", "kwyn/backbones"])   # {"kwyn/backbones/base.py": "9a4...", ...}
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import yaml

from kwyn.io import write_json
from kwyn.params import project_root


def files_of(paths, root: Path) -> list[str]:
    """The files `paths` hold (a folder: its files, recursively, without __pycache__), relative to root."""
    files = set()
    for path in paths:
        full = root / path
        if full.is_dir():
            files.update(p.relative_to(root).as_posix() for p in full.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        elif full.is_file():
            files.add(Path(path).as_posix())
        else:
            raise FileNotFoundError(f"{full} is listed as a source but does not exist")
    return sorted(files)


def fingerprint(paths, root: str | Path | None = None) -> dict[str, str]:
    """{file: MD5 of its bytes} for every file that `paths` (files or folders, relative to root) hold."""
    root = Path(root) if root is not None else project_root()
    return {f: hashlib.md5((root / f).read_bytes()).hexdigest() for f in files_of(paths, root)}


def stage_sources(stage: str, dvc_yaml: str | Path) -> tuple[list[str], str]:
    """The deps and the one out of a sources stage of dvc.yaml."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    if stage not in stages:
        raise KeyError(f"{dvc_yaml} has no stage {stage!r}")
    outs = stages[stage].get("outs", [])
    if len(outs) != 1 or not isinstance(outs[0], str):
        raise ValueError(f"stage {stage!r} of {dvc_yaml} must have exactly one out, its fingerprint file")
    return list(stages[stage]["deps"]), outs[0]


def write_fingerprint(stage: str, root: str | Path | None = None) -> Path:
    root = Path(root) if root is not None else project_root()
    deps, out = stage_sources(stage, root / "dvc.yaml")
    write_json(root / out, {"stage": stage, "files": fingerprint(deps, root)})
    return root / out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kwyn.sources", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", help="a sources stage of dvc.yaml, e.g. sources_train")
    print(write_fingerprint(parser.parse_args(argv).stage))


if __name__ == "__main__":
    main()

"""Copy the executed notebooks of one representative experiment to docs/notebooks/, where git keeps them.

`dvc repro` leaves every executed notebook under executed/ (DVC outputs, not in git). So that the repository
shows what ran, `make repro` then copies, with their outputs, the notebooks of one experiment (by default the
first of params.yaml that learns masks): its dataset's 01_prepare_data, its 02_train_masks and 03_trim, and
04_report. With --tour it also executes notebooks/00_tour.ipynb there (a minute or two).

    python scripts/publish_notebooks.py                      # after dvc repro
    python scripts/publish_notebooks.py --experiment whisper_word_kwyn_distil_75 --tour
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sources(experiment: str, dataset: str, executed: Path) -> dict[str, Path]:
    """{published name: executed notebook} for one experiment."""
    return {"01_prepare_data.ipynb": executed / "01_prepare_data" / f"{dataset}.ipynb",
            "02_train_masks.ipynb": executed / "02_train_masks" / f"{experiment}.ipynb",
            "03_trim.ipynb": executed / "03_trim" / f"{experiment}.ipynb",
            "04_report.ipynb": executed / "04_report.ipynb"}


def main(argv=None) -> None:
    sys.path.insert(0, str(ROOT))
    from kwyn import pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="default: the first experiment of params.yaml that learns masks")
    parser.add_argument("--executed", type=Path, default=ROOT / "executed")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks")
    parser.add_argument("--tour", action="store_true", help="also execute notebooks/00_tour.ipynb into --out")
    args = parser.parse_args(argv)
    experiment = pipeline.default_experiment(args.experiment)
    found = sources(experiment, pipeline.experiment(experiment).dataset, args.executed)
    missing = [str(p) for p in found.values() if not p.exists()]
    if missing:
        raise SystemExit(f"not executed yet: {', '.join(missing)}: run `dvc repro` first")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in found.items():
        shutil.copyfile(path, args.out / name)
    (args.out / "EXPERIMENT").write_text(f"{experiment}\n")
    if args.tour:
        subprocess.run([sys.executable, "-m", "papermill", "--engine", "kwyn", "--cwd", str(ROOT / "notebooks"),
                        "-k", "python3", str(ROOT / "notebooks" / "00_tour.ipynb"), str(args.out / "00_tour.ipynb")],
                       check=True)
    print(f"{experiment}'s executed notebooks are in {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

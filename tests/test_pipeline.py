"""The real pipeline: `dvc repro` running the papermill notebooks on a tiny grid, in a copy of the repo."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import ROOT, tiny_params
from kwyn.params import read_yaml

BIN = str(Path(sys.executable).parent)


def run(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


TRIO = {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch", "method": "base", "train": {"steps": 4}}


def grid_params() -> dict:
    """The tiny grid with a scratch entry too (the scratch stages wait for their kwyn experiment's model) and a
    `three_seeds` entry (one train and one trim stage for its three runs)."""
    params = tiny_params(steps=6)
    params["scratch"] = {"tiny_scratch": {"from": "tiny_kwyn", "train": {"steps": 3}}}
    params["three_seeds"] = {"tiny_trio": TRIO}
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git copy of the project's tracked files, with a tiny params.yaml, reproduced once."""
    copy = tmp_path_factory.mktemp("repo")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file() and not name.startswith(("tables/", "figures/", "metrics/")) \
                and name != "dvc.lock":
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / "params.yaml").write_text(yaml.safe_dump(grid_params(), sort_keys=False))
    run(["git", "init", "-q"], copy)
    run(["dvc", "repro"], copy)
    return copy


@pytest.mark.slow
def test_repro_writes_tables_figures_and_executed_notebooks(repo):
    for path in ["tables/table1.md", "tables/table1.csv", "tables/table1.tex", "tables/table2.md",
                 "tables/table2.csv", "tables/table2.tex", "tables/results.csv",
                 "figures/metric_vs_trimming.png", "figures/kept_units_heatmap.png", "figures/pareto_latency.png",
                 "figures/mask_overlap.png",
                 "executed/04_report.ipynb", "executed/02_train_masks/tiny_kwyn.ipynb", "executed/03_trim/tiny_kwyn.ipynb",
                 "runs/tiny_kwyn/kept_units.csv",
                 "models/tiny_kwyn/model.safetensors", "dvc.lock"]:
        assert (repo / path).exists(), path
    result = json.loads((repo / "metrics" / "tiny_kwyn.json").read_text())
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-5
    executed = nbformat.read(repo / "executed" / "02_train_masks" / "tiny_kwyn.ipynb", as_version=4)
    assert any("tiny_kwyn" in cell.source for cell in executed.cells if "injected-parameters" in
               cell.metadata.get("tags", []))
    table1 = (repo / "tables" / "table1.csv").read_text()
    assert "crepe-tiny" in table1 and "base" in table1
    scratch = json.loads((repo / "metrics" / "tiny_scratch.json").read_text())
    kwyn = json.loads((repo / "metrics" / "tiny_kwyn.json").read_text())
    assert scratch["method"] == "scratch" and scratch["kept_indices"] == kwyn["kept_indices"]
    # dvc.yaml's plots render: the report's figures and the two views of tables/results.csv
    run(["dvc", "plots", "show", "-o", "dvc_plots"], repo)
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert "metric_vs_trimming" in html and "metric_vs_latency" in html and "kept_units_heatmap" in html
    # and every run's training curves, written at each validation
    assert "live/tiny_kwyn/history.csv" in html
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = next(iter(shown.values()))["data"]
    last = (repo / "runs" / "tiny_kwyn" / "history.csv").read_text().splitlines()[-1].split(",")
    assert metrics["live/tiny_kwyn/metrics.json"]["data"]["step"] == int(last[0])
    # the three_seeds entry: one executed notebook per stage, three runs, three models, three results
    assert not (repo / "executed" / "02_train_masks" / "tiny_trio_seed1.ipynb").exists()
    for name, seed in [("tiny_trio", 0), ("tiny_trio_seed1", 1), ("tiny_trio_seed2", 2)]:
        assert json.loads((repo / "metrics" / f"{name}.json").read_text())["seed"] == seed
        assert (repo / "models" / name / "model.safetensors").exists()
        assert f"live/{name}/history.csv" in html
    assert (repo / "executed" / "03_trim" / "tiny_trio.ipynb").exists()


@pytest.mark.slow
def test_a_run_trained_after_others_in_one_kernel_equals_the_run_trained_alone(repo, tmp_path):
    """The second run of a three_seeds stage, trained in the kernel that trained the first, against the same
    experiment given on its own (`experiments`, train.seed 1) and trained in a fresh process."""
    alone = Path(shutil.copytree(repo, tmp_path / "repo", symlinks=True))
    params = grid_params()
    params["experiments"]["tiny_alone"] = {**TRIO, "train": {**TRIO["train"], "seed": 1}}
    (alone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "kwyn.pipeline", "train", "tiny_alone"], alone)
    together = (repo / "runs" / "tiny_trio_seed1" / "history.csv").read_text()
    assert (alone / "runs" / "tiny_alone" / "history.csv").read_text() == together
    assert together != (repo / "runs" / "tiny_trio" / "history.csv").read_text()  # the seed changes the run


@pytest.mark.slow
def test_dvc_exp_run_set_param_runs_one_ablation(repo):
    """`dvc exp run -S` asks kwyn for a trimming ratio: only that experiment, its scratch and the report rerun."""
    (repo / "params.yaml").write_text(yaml.safe_dump(grid_params(), sort_keys=False))
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=kwyn", "-c", "user.email=kwyn@localhost", "commit", "-qm", "tiny grid"], repo)
    out = run(["dvc", "exp", "run", "-S", "+experiments.tiny_kwyn.sparsity.ratio=0.5"], repo).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@tiny_kwyn", "trim@tiny_kwyn", "train_scratch@tiny_scratch", "trim_scratch@tiny_scratch",
                   "report"}, out
    result = json.loads((repo / "metrics" / "tiny_kwyn.json").read_text())
    assert result["target_ratio"] == 0.5 and abs(result["trim_ratio"] - 0.5) <= 0.02
    shown = run(["dvc", "exp", "show", "--csv"], repo).stdout
    assert "experiments.tiny_kwyn.sparsity.ratio" in shown


@pytest.mark.slow
def test_dvc_exp_run_set_param_of_a_three_seeds_entry_reruns_its_two_stages(repo):
    (repo / "params.yaml").write_text(yaml.safe_dump(grid_params(), sort_keys=False))
    run(["dvc", "repro"], repo)  # what other tests changed, back to the tiny grid
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=kwyn", "-c", "user.email=kwyn@localhost", "commit", "-qm", "tiny grid"], repo)
    out = run(["dvc", "exp", "run", "-S", "three_seeds.tiny_trio.train.steps=3"], repo).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train_three_seeds@tiny_trio", "trim_three_seeds@tiny_trio", "report"}, out
    for name in ("tiny_trio", "tiny_trio_seed1", "tiny_trio_seed2"):
        assert json.loads((repo / "runs" / name / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_second_repro_does_nothing_and_one_param_reruns_only_its_stages(repo):
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo).stdout
    params = read_yaml((repo / "params.yaml").read_text())  # as DVC and kwyn read it
    params["experiments"]["tiny_kwyn"]["sparsity"]["t"] = 0.4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # a real repro, not --dry: a dry run cannot know that train's new outputs change the stages after it
    out = run(["dvc", "repro"], repo).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@tiny_kwyn", "trim@tiny_kwyn", "train_scratch@tiny_scratch", "trim_scratch@tiny_scratch",
                   "report"}, out


@pytest.mark.slow
def test_a_bad_param_stops_the_stage_naming_the_key(repo):
    params = read_yaml((repo / "params.yaml").read_text())  # as DVC and kwyn read it
    params["experiments"]["tiny_kwyn"]["sparsity"]["t"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["dvc", "repro", "train@tiny_kwyn"], repo, check=False)
    assert failed.returncode != 0
    assert "experiments.tiny_kwyn.sparsity.t: Input should be less than or equal to 1" in failed.stdout + failed.stderr


def test_source_notebooks_are_output_free_and_parameterised():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        if path.name not in ("00_tour.ipynb", "04_report.ipynb"):  # the tour is not a stage
            assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{path.name}: no parameters cell"


@pytest.mark.slow
def test_notebooks_run_top_to_bottom_as_they_are(repo):
    """Opened in JupyterLab, with no papermill: the parameters cell's None picks params.yaml's first experiment."""
    from nbclient import NotebookClient

    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(steps=6), sort_keys=False))
    for name in ["01_prepare_data", "02_train_masks", "03_trim", "04_report"]:
        book = nbformat.read(repo / "notebooks" / f"{name}.ipynb", as_version=4)
        NotebookClient(book, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(repo / "notebooks")}}).execute()
        assert not any(o.get("output_type") == "error" for c in book.cells for o in c.get("outputs", []))
    evaluated = json.loads((repo / "metrics" / "tiny_kwyn.json").read_text())
    assert evaluated["experiment"] == "tiny_kwyn"


def _kwyn_files_loaded(repo: Path, notebook: str, parameter: str | None, value: str | None) -> set[str]:
    """The kwyn source files loaded when `notebook`'s code runs (its parameters cell set to `value`), relative to
    the project: run in a fresh interpreter, as papermill runs it (--cwd notebooks)."""
    book = nbformat.read(repo / notebook, as_version=4)
    cells = [c.source for c in book.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    script = "\n".join([f"{parameter} = {value!r}" if parameter else "", "import matplotlib; matplotlib.use('Agg')",
                        "from IPython.display import display",  # a builtin in a kernel
                        *cells, "import json, sys, pathlib, kwyn",
                        "home = pathlib.Path(kwyn.__file__).resolve().parents[1]",  # where the package is installed from
                        "print('\\nLOADED', json.dumps([pathlib.Path(m.__file__).resolve().relative_to(home).as_posix()"
                        " for n, m in sys.modules.items() if (n == 'kwyn' or n.startswith('kwyn.'))"
                        " and getattr(m, '__file__', None)]))"])
    out = run([sys.executable, "-c", script], repo / "notebooks").stdout
    return set(json.loads(out.rsplit("LOADED ", 1)[1]))


@pytest.mark.slow
def test_every_stage_lists_as_deps_the_kwyn_modules_its_notebook_runs(repo, tmp_path):
    """A change to any module a stage runs makes DVC rerun the stage: nothing stale is left behind unreported."""
    import re

    repo = Path(shutil.copytree(repo, tmp_path / "repo", symlinks=True))  # the stages rerun here, not in `repo`
    # the grid with a scratch entry, whatever other tests left: a stage group with no entry would go unchecked
    (repo / "params.yaml").write_text(yaml.safe_dump(grid_params(), sort_keys=False))
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = read_yaml(repo / "params.yaml")
    # a stage that depends on a fingerprint file depends on what its sources stage lists (kwyn/sources.py)
    fingerprinted = {stage["outs"][0]: stage["deps"] for stage in stages.values()
                     if stage.get("cmd", "").startswith("python -m kwyn.sources")}
    missing, checked = {}, set()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        if body["cmd"].startswith("python -m kwyn.sources"):
            continue
        notebook = re.search(r"(notebooks/\S+\.ipynb)", body["cmd"]).group(1)
        parameter = re.search(r"-p (\w+) \$\{key\}", body["cmd"])
        section = stage.get("foreach", "").strip("${}")
        keys = list(params.get(section) or {}) if parameter else [None]
        deps = [m for d in body["deps"] if "${" not in d for m in fingerprinted.get(d, [d])]
        for key in keys:
            checked.add(f"{name}@{key}" if key else name)
            loaded = _kwyn_files_loaded(repo, notebook, parameter and parameter.group(1), key)
            uncovered = sorted(f for f in loaded if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
            if uncovered:
                missing[f"{name}@{key}" if key else name] = uncovered
    assert not missing, f"dvc.yaml stages run kwyn modules they do not list as deps: {missing}"
    assert {"train_scratch@tiny_scratch", "trim_scratch@tiny_scratch", "train_three_seeds@tiny_trio",
            "trim_three_seeds@tiny_trio"} <= checked, checked
    assert {"fingerprints/train.json", "fingerprints/trim.json"} <= set(fingerprinted), fingerprinted


@pytest.mark.slow
def test_a_module_change_reruns_the_stages_that_run_it_and_only_those(repo, tmp_path):
    """Through the fingerprints: a trim-only module reruns the trim stages, not training; a module no stage
    notebook runs reruns nothing but the fingerprint stages, which stop DVC there."""
    repo = Path(shutil.copytree(repo, tmp_path / "repo", symlinks=True))
    (repo / "params.yaml").write_text(yaml.safe_dump(grid_params(), sort_keys=False))
    run(["dvc", "repro"], repo)

    def rerun_after_appending(module: str) -> set[str]:
        with open(repo / module, "a") as f:
            f.write("\n# changed\n")
        out = run(["dvc", "repro"], repo).stdout  # not --dry: that cannot know whether a fingerprint changes
        return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}

    assert rerun_after_appending("kwyn/report.py") == {"report"}
    trim_only = rerun_after_appending("kwyn/profile.py")
    assert "sources_trim" in trim_only and "trim@tiny_kwyn" in trim_only and "trim_scratch@tiny_scratch" in trim_only
    assert not any(s.startswith(("train", "sources_train")) for s in trim_only), trim_only


@pytest.mark.slow
def test_publish_copies_one_experiments_executed_notebooks_with_their_outputs(repo, tmp_path):
    (repo / "params.yaml").write_text(yaml.safe_dump(grid_params(), sort_keys=False))  # other tests change it
    run(["dvc", "repro"], repo)
    run([sys.executable, "scripts/publish_notebooks.py", "--out", str(tmp_path)], repo)
    assert (tmp_path / "EXPERIMENT").read_text().strip() == "tiny_kwyn"  # the first that learns masks
    for name in ["01_prepare_data", "02_train_masks", "03_trim", "04_report"]:
        book = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in book.cells if c.cell_type == "code"), name
    figures = [o for c in nbformat.read(tmp_path / "02_train_masks.ipynb", as_version=4).cells
               for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) >= 2  # the STE gradients and the history at least
    failed = run([sys.executable, "scripts/publish_notebooks.py", "--experiment", "tiny_base", "--executed",
                  str(tmp_path / "none"), "--out", str(tmp_path / "x")], repo, check=False)
    assert failed.returncode and "run `dvc repro` first" in failed.stderr

"""What each pipeline stage does, by name: the notebooks call these and show the results.

Also a command line, for running stages outside DVC (torchrun, a SLURM array: docs/scaling.md):
  python -m kwyn.pipeline prepare|train|trim|evaluate <name>     python -m kwyn.pipeline report

Paths (relative to the project root, see dvc.yaml):
  data/<dataset>/raw, data/<dataset>/prepared   01_prepare_data
  runs/<experiment>/                             02_train_masks (resumable)
  models/<experiment>/                           03_trim (config.json + model.safetensors) ...
  metrics/<experiment>.json                      ... and its evaluation (the same notebook: trim, then evaluate)
  tables/, figures/                              04_report
"""
from __future__ import annotations

from pathlib import Path

# each stage imports what it runs inside its function, so that a stage loads only the modules its dvc.yaml
# stage lists as deps (tests/test_pipeline.py checks it)
from kwyn.params import ResolvedExperiment, experiment, experiment_names, load_params, project_root, stage_runs  # noqa: F401


def root() -> Path:
    return project_root()


def data_dir(dataset: str) -> Path:
    return root() / "data" / dataset


def run_dir(name: str) -> Path:
    return root() / "runs" / name


def live_dir(name: str) -> Path:
    """The run's training curves and last validation, written at every validation (dvc.yaml: metrics and plots)."""
    return root() / "live" / name


def model_dir(name: str) -> Path:
    return root() / "models" / name


def metrics_path(name: str) -> Path:
    return root() / "metrics" / f"{name}.json"


def default_experiment(name: str | None = None) -> str:
    """`name`, or when None (a notebook opened as it is) the first entry of params.yaml's `three_seeds` and
    `experiments` that learns masks: what a train or trim stage is named after (kwyn.params.stage_runs)."""
    if name is not None:
        return name
    from kwyn.methods import METHODS

    params = load_params()
    entries = {**params.three_seeds, **params.experiments}
    return next((k for k, e in entries.items() if METHODS[e.method].learns_masks), next(iter(entries)))


def default_dataset(name: str | None = None) -> str:
    return name if name is not None else next(iter(load_params().datasets))


def prepare(dataset: str) -> dict:
    """Render (offline kinds) or read (benchmarks, custom) dataset `dataset` of params.yaml, then write
    data/<dataset>/prepared (meta.json + split arrays). Returns {"rendered": summary or None, "prepared":
    {split: summary}}."""
    from kwyn.data.benchmarks import load_benchmark, prepare_task
    from kwyn.data.custom import load_custom

    params = load_params()
    if dataset not in params.datasets:
        raise KeyError(f"unknown dataset {dataset!r}; defined in params.yaml: {sorted(params.datasets)}")
    p = params.datasets[dataset]
    raw, out = data_dir(dataset) / "raw", data_dir(dataset) / "prepared"
    prep = dict(sample_rate=p.sample_rate, clip_seconds=p.clip_seconds, offset_seconds=p.offset_seconds,
                on_bad_audio=p.on_bad_audio, workers=p.workers)
    if p.kind == "soundfont_notes":
        from kwyn.data.prepare import prepare_nsynth_like
        from kwyn.data.soundfont import render_nsynth_like

        rendered = render_nsynth_like(raw, seed=p.seed, sample_rate=p.sample_rate, note_seconds=p.note_seconds,
                                      pitches=tuple(p.pitches), velocities=tuple(p.velocities), families=p.families,
                                      split_per_family=tuple(p.split_per_family))
        return {"rendered": rendered, "prepared": prepare_nsynth_like(raw, out, pitches=tuple(p.pitches), **prep)}
    if p.kind == "spoken_commands":
        from kwyn.data.spoken_commands import prepare_spoken_commands, render_spoken_commands

        rendered = render_spoken_commands(raw, seed=p.seed, words=p.words, voices=p.voices, rates=p.rates,
                                          pitches=p.pitches, noise_db=p.noise_db, sample_rate=p.sample_rate,
                                          split_by=p.split_by, split_per_voice=p.split_per_voice,
                                          split_per_utterance=p.split_per_utterance, workers=p.workers)
        # only the tasks an experiment may use: a voice split's prepared files stay word-only, as before `speaker`
        tasks = [t for t in p.TASKS if p.refusal(t) is None]
        return {"rendered": rendered, "prepared": prepare_spoken_commands(raw, out, tasks=tasks, **prep)}
    if p.kind == "custom":
        data = load_custom(root() / p.path, name=dataset, split_shares=p.split_shares, split_seed=p.split_seed)
    else:  # a benchmark
        where = root() / p.root if p.root else raw
        if p.download:
            from kwyn.data.download import fetch

            where = fetch(p.kind, where)
        data = load_benchmark(p.kind, where, **p.loader_args())
    if data.task not in p.TASKS:  # the loaders and params.py's task declarations must agree
        raise RuntimeError(f"{p.kind} gave task {data.task!r}, but params.py declares {list(p.TASKS)}")
    return {"rendered": None, "prepared": prepare_task(data, out, **prep)}


def train(name: str, **kwargs) -> dict:
    from kwyn import train as _train

    exp = experiment(name)
    source = model_dir(exp.source) if exp.source is not None else None  # scratch: the model it re-trains
    return _train.train(exp, data_dir(exp.dataset) / "prepared", run_dir(name), source_model_dir=source,
                        live_dir=live_dir(name), **kwargs)


def trim(name: str) -> dict:
    from kwyn import evaluate as _evaluate

    exp = experiment(name)
    return _evaluate.trim_run(exp, run_dir(name), model_dir(name), data_dir(exp.dataset) / "prepared")


def evaluate(name: str, progress: bool = True) -> dict:
    from kwyn import evaluate as _evaluate

    exp = experiment(name)
    result = _evaluate.evaluate_run(exp, data_dir(exp.dataset) / "prepared", run_dir(name), model_dir(name),
                                    progress=progress)
    _evaluate.write_result(result, metrics_path(name))
    return result


def report() -> dict:
    from kwyn import report as _report

    results = [_evaluate_result(name) for name in experiment_names()]
    return _report.write_all(results, root() / "tables", root() / "figures")


def _evaluate_result(name: str) -> dict:
    from kwyn.io import read_json

    path = metrics_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the evaluate stage of {name} first")
    return read_json(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kwyn.pipeline", description="Run one pipeline stage.")
    parser.add_argument("stage", choices=["prepare", "train", "trim", "evaluate", "report"])
    parser.add_argument("name", nargs="?", help="dataset (prepare) or experiment (train, trim, evaluate)")
    args = parser.parse_args()
    if args.stage == "report":
        report()
    elif args.name is None:
        parser.error(f"stage {args.stage} needs a name")
    else:
        globals()[args.stage](args.name)

"""Grids (kwyn.grid): params.yaml's `grids:`, their expansion, and switching the active grid."""
import copy
import shutil
from pathlib import Path

import pytest
import yaml

from kwyn.grid import SECTIONS, _applied, _cli, expand, load_grids, pct, short_name, use
from kwyn.params import GridSpec, ParamsError, experiment, validate

ROOT = Path(__file__).resolve().parent.parent
PAPER_PREFIXES = ["cnn14_esc50", "cnn14_urbansound8k", "cnn14_fsd50k", "musicfm_mtt", "musicfm_gtzan",
                  "musicfm_nsynth", "w2v2_fsc", "w2v2_librispeech", "w2v2_speech_commands"]


def current() -> dict:
    """params.yaml as it is now (read at test time: the active sections may be edited)."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def grids() -> dict:
    return load_grids(current())


@pytest.fixture
def params_copy(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", path)
    return path


def test_names():
    assert [short_name(b) for b in ("clap-cnn14", "wav2vec2-base", "musicfm", "crepe-full",
                                    "whisper-tiny-encoder", "hubert-base")] == [
        "cnn14", "w2v2", "musicfm", "crepe", "whisper", "hubertbase"]
    assert [pct(r) for r in (0.25, 0.5, 0.75, 0.125)] == ["25", "50", "75", "12p5"]


def test_paper_grid_counts_names_and_links():
    e = expand(grids()["paper"])
    assert len(e["datasets"]) == 9
    assert len(e["experiments"]) == 45 and len(e["scratch"]) == 27 and e["skipped"] == []
    expected = [f"{p}_{m}" for p in PAPER_PREFIXES for m in ("base", "ssf", "kwyn_25", "kwyn_50", "kwyn_75")]
    assert list(e["experiments"]) == expected
    assert "cnn14_esc50_kwyn_50" in e["experiments"]
    assert sorted(e["scratch"]) == sorted(f"{p}_scratch_{r}" for p in PAPER_PREFIXES for r in (25, 50, 75))
    for name, entry in e["scratch"].items():
        source = entry["from"]
        assert source == name.replace("_scratch_", "_kwyn_") and e["experiments"][source]["method"] == "kwyn"
        assert entry["train"] == {"steps": 25000, "encoder_lr": 0.0001, "warmup": 0.04}
    exp = e["experiments"]["cnn14_esc50_kwyn_50"]
    assert exp == {"backbone": "clap-cnn14", "dataset": "esc50", "task": "category", "method": "kwyn",
                   "sparsity": {"loss": "paper", "t": 0.5, "lambda": 1.0, "ratio": 0.5},
                   "profile": {"input_seconds": 5.0}}
    assert e["experiments"]["w2v2_librispeech_base"]["task"] == "transcript"
    assert e["train"]["steps"] == 100000


def test_paper_grid_validates_as_a_whole_params_document():
    raw = current()
    e = expand(grids()["paper"])
    params = validate(_applied(raw, e), "paper")
    assert list(params.experiments) == list(e["experiments"])
    assert experiment("musicfm_gtzan_kwyn_75", params).train.steps == 100000
    scratch = experiment("musicfm_gtzan_scratch_75", params)
    assert (scratch.train.steps, scratch.train.encoder_lr, scratch.source) == (25000, 1e-4, "musicfm_gtzan_kwyn_75")
    assert params.datasets["esc50"].sample_rate == 44100 and params.datasets["mtt"].sample_rate == 24000


def test_default_grid_is_the_active_grid():
    """grids.default must reproduce params.yaml's active sections exactly, so the two never drift apart."""
    raw = current()
    e = expand(grids()["default"])
    for section in SECTIONS:
        assert e[section] == (raw.get(section) or {}), section
        assert list(e[section]) == list(raw.get(section) or {}), f"{section}: order"
    assert e["train"] == raw["train"]


def test_use_switches_and_restores(params_copy):
    original = params_copy.read_text()
    assert use("default", params_copy)["changed"] is False  # already active: not a byte changes
    assert params_copy.read_text() == original

    result = use("paper", params_copy)
    assert (result["experiments"], result["scratch"]) == (45, 27)
    switched = params_copy.read_text()
    raw = yaml.safe_load(switched)
    e = expand(load_grids(raw)["paper"])
    for section in SECTIONS:
        assert raw[section] == e[section]
    assert raw["train"]["steps"] == 100000 and raw["train"]["lr"] == 0.001
    head = original[:original.index("\ndatasets:")]
    assert switched.startswith(head)  # every comment above `datasets:` kept
    assert "  steps: 100000" in switched and "# mask logits: docs/design-notes.md" in switched
    tail = original[original.index("# ---- More datasets"):]
    assert switched.endswith(tail)  # the commented examples and the grids kept as they are

    use("default", params_copy)
    restored = params_copy.read_text()
    assert yaml.safe_load(restored) == yaml.safe_load(original)
    assert restored.startswith(head) and restored.endswith(tail)
    comments = {line.strip() for line in original.splitlines() if line.lstrip().startswith("#")}
    kept = {line.strip() for line in restored.splitlines() if line.lstrip().startswith("#")}
    # full-line comments are all kept (those inside the replaced sections' entries are rewritten away)
    assert comments - kept == set()
    train_lines = [line for line in original.splitlines() if line.startswith("  ") and "#" in line
                   and line.split(":")[0].strip() in yaml.safe_load(original)["train"]]
    for line in train_lines:
        assert line in restored.splitlines()  # train keys back with their comments, in their columns
    use("default", params_copy)
    assert params_copy.read_text() == restored


def _with_grid(path: Path, name: str, spec: dict) -> None:
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("grids", {})[name] = spec
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def small_spec(**changes) -> dict:
    spec = {"description": "one benchmark",
            "datasets": {"gtzan": {"kind": "gtzan", "root": "data_in/gtzan", "sample_rate": 24000, "clip_seconds": 30.0},
                         "mtt": {"kind": "magnatagatune", "root": "data_in/mtt", "sample_rate": 24000}},
            "tasks": {"musicfm": [["gtzan", "genre"]]},
            "methods": ["base", "kwyn", "scratch", "convexity"],
            "ratios": [0.5]}
    spec.update(changes)
    return spec


def test_invalid_grid_names_the_key(params_copy):
    _with_grid(params_copy, "bad", small_spec(tasks={"musicfm": [["gtzan", "genre"], ["gtzan", "tags"]]}))
    before = params_copy.read_text()
    with pytest.raises(ParamsError, match=r"grids\.bad.*tasks\.musicfm\[1\]: unknown task 'tags' for gtzan"):
        use("default", params_copy)
    raw = yaml.safe_load(before)
    with pytest.raises(ParamsError, match=r"grids\.bad.*unknown task 'tags'"):
        validate(raw)
    assert params_copy.read_text() == before
    for bad, match in [
        ({"tasks": {"musicfm": [["nowhere", "genre"]]}}, "unknown dataset 'nowhere'"),
        ({"tasks": {"no-such-model": [["gtzan", "genre"]]}}, "unknown backbone"),
        ({"sparsity": {"ratio": 0.5}}, "sparsity.ratio: leave it out"),
        ({"methods": ["base", "scratch"]}, "scratch needs kwyn"),
        ({"profile": {"crepe-full": {"input_seconds": 1.0}}}, r"profile: backbone\(s\) \['crepe-full'\]"),
        ({"methods": ["base", "bogus"]}, "methods"),
    ]:
        with pytest.raises(ParamsError, match=match):
            load_grids({"grids": {"bad": small_spec(**bad)}})


def test_use_validates_the_whole_result_before_writing(params_copy):
    # a valid grid shape, but CLAP's CNN14 pools time away: no ASR (Params' own cross-check)
    spec = small_spec(datasets={"ls": {"kind": "librispeech", "download": True}}, tasks={"clap-cnn14": [["ls", "transcript"]]},
                      methods=["base"])
    _with_grid(params_copy, "asr_on_cnn", spec)
    before = params_copy.read_text()
    with pytest.raises(ParamsError, match="experiments.cnn14_ls_base.backbone: 'clap-cnn14' gives no frame sequence"):
        use("asr_on_cnn", params_copy)
    assert params_copy.read_text() == before


def test_unknown_grid_lists_the_known_ones(params_copy):
    with pytest.raises(ParamsError, match=r"unknown grid 'papper'; grids in .*: default, every_method, paper"):
        use("papper", params_copy)


def test_convexity_skipped_where_it_does_not_apply():
    spec = GridSpec.model_validate(small_spec(tasks={"wav2vec2-base": [["gtzan", "genre"], ["mtt", "tags"]],
                                                     "clap-cnn14": [["gtzan", "genre"]]},
                                              methods=["base", "convexity"], ratios=[]))
    e = expand(spec)
    assert list(e["experiments"]) == ["w2v2_gtzan_base", "w2v2_gtzan_convexity", "w2v2_mtt_base", "cnn14_gtzan_base"]
    assert [name for name, _ in e["skipped"]] == ["w2v2_mtt_convexity", "cnn14_gtzan_convexity"]
    assert "tagging" in e["skipped"][0][1] and "no transformer layers" in e["skipped"][1][1]


def test_name_by_task_and_extra_experiments_order():
    spec = GridSpec.model_validate(small_spec(
        name_by="task", methods=["base", "kwyn"], ratios=[0.25], lottery=None,
        tasks={"musicfm": [["gtzan", "genre"]], "wav2vec2-base": []},
        extra_experiments={"x_mtt": {"backbone": "musicfm", "dataset": "mtt", "task": "tags", "method": "base"}}))
    e = expand(spec)
    assert list(e["experiments"]) == ["musicfm_genre_base", "musicfm_genre_kwyn_25", "x_mtt"]
    assert e["scratch"] == {}


def test_recipes_for_gives_each_backbone_its_own_recipes():
    spec = GridSpec.model_validate(small_spec(
        name_by="task", methods=["kwyn"], ratios=[0.5], lottery=None,
        tasks={"musicfm": [["gtzan", "genre"]], "wav2vec2-base": [["gtzan", "genre"]]},
        recipes={"fast": {"refit": 10}, "slow": {"head_warmup": 5}}, recipes_for={"musicfm": ["slow"]}))
    assert list(expand(spec)["experiments"]) == ["musicfm_genre_kwyn_50", "musicfm_genre_kwyn_slow_50",
                                                 "w2v2_genre_kwyn_50", "w2v2_genre_kwyn_fast_50",
                                                 "w2v2_genre_kwyn_slow_50"]
    with pytest.raises(ValueError, match=r"recipes_for.musicfm: unknown recipe\(s\) \['quick'\]"):
        GridSpec.model_validate(small_spec(tasks={"musicfm": [["gtzan", "genre"]]}, methods=["kwyn"],
                                           ratios=[0.5], lottery=None, recipes={"fast": {"refit": 10}},
                                           recipes_for={"musicfm": ["quick"]}))


def test_recipe_sparsity_and_train_reach_only_that_recipes_experiments():
    spec = GridSpec.model_validate(small_spec(
        name_by="task", methods=["kwyn"], ratios=[0.5], lottery=None, tasks={"musicfm": [["gtzan", "genre"]]},
        recipes={"end": {"refit": 10}}, recipe_sparsity={"end": {"ratio_ramp": 1.0}},
        recipe_train={"end": {"select_after": 1.0}}))
    e = expand(spec)["experiments"]
    assert e["musicfm_genre_kwyn_end_50"]["sparsity"]["ratio_ramp"] == 1.0
    assert e["musicfm_genre_kwyn_end_50"]["sparsity"]["ratio"] == 0.5
    assert e["musicfm_genre_kwyn_end_50"]["train"]["select_after"] == 1.0
    assert "ratio_ramp" not in e["musicfm_genre_kwyn_50"]["sparsity"] and "train" not in e["musicfm_genre_kwyn_50"]
    with pytest.raises(ValueError, match=r"recipe_sparsity: unknown recipe\(s\) \['fast'\]"):
        GridSpec.model_validate(small_spec(tasks={"musicfm": [["gtzan", "genre"]]}, methods=["kwyn"], ratios=[0.5],
                                           lottery=None, recipes={"end": {"refit": 10}},
                                           recipe_sparsity={"fast": {"ratio_ramp": 1.0}}))
    with pytest.raises(ValueError, match="recipe_sparsity: leave `ratio` out"):
        GridSpec.model_validate(small_spec(tasks={"musicfm": [["gtzan", "genre"]]}, methods=["kwyn"], ratios=[0.5],
                                           lottery=None, recipes={"end": {"refit": 10}},
                                           recipe_sparsity={"end": {"ratio": 0.3}}))


def test_selection_before_the_ratio_ramp_ends_is_refused(params_copy):
    """A ramp to the end of the mask training with the default select_after (0.5) would select a checkpoint that
    removes less than asked: the grid (and any params.yaml) must say select_after >= ratio_ramp."""
    spec = GridSpec.model_validate(small_spec(
        name_by="task", methods=["kwyn"], ratios=[0.5], lottery=None, tasks={"musicfm": [["gtzan", "genre"]]},
        recipes={"end": {"refit": 10}}, recipe_sparsity={"end": {"ratio_ramp": 1.0}}))
    params = yaml.safe_load(params_copy.read_text())
    expanded = expand(spec)
    params.update(datasets=expanded["datasets"], experiments=expanded["experiments"], three_seeds={}, scratch={})
    with pytest.raises(ParamsError, match=r"experiments.musicfm_genre_kwyn_end_50: train.select_after 0.5 is before "
                                          r"the end of the ratio ramp \(sparsity.ratio_ramp 1\)"):
        validate(params)
    params["experiments"]["musicfm_genre_kwyn_end_50"]["train"] = {"select_after": 1.0}
    validate(params)


def test_cli(params_copy, capsys):
    assert _cli(["--params", str(params_copy), "list"]) == 0
    out = capsys.readouterr().out
    assert "* default: 3 datasets" in out and "  paper: 9 datasets, 45 experiments, 27 scratch" in out
    assert _cli(["--params", str(params_copy), "show", "paper"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cnn14_esc50_base" and "cnn14_esc50_scratch_25  (from cnn14_esc50_kwyn_25)" in out
    assert _cli(["use", "paper", "--params", str(params_copy)]) == 0
    assert "grid 'paper' is active" in capsys.readouterr().out
    assert _cli(["--params", str(params_copy), "use", "nope"]) == 2
    assert "unknown grid 'nope'" in capsys.readouterr().err
    assert copy.deepcopy(yaml.safe_load(params_copy.read_text()))["train"]["steps"] == 100000

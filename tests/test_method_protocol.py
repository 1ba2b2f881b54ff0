"""The method protocol (kwyn.methods): every registered method runs a step through the real pipeline and, where it
removes units, its trimmed model gives the masked model's outputs; and HardConcrete, the seventh method."""
import math

import pandas as pd
import pytest
import torch
from conftest import tiny_params

from kwyn.backbones import load_backbone
from kwyn.evaluate import evaluate_run, trim_run
from kwyn.hardconcrete import HardConcreteSet
from kwyn.methods import METHODS, modulation_set
from kwyn.params import ParamsError, experiment, validate
from kwyn.sites import SiteModulationSet
from kwyn.train import train

TINY = {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch"}
# one experiment per registered method, the smallest that exercises it
SPECS = {
    "base": {"method": "base"},
    "ssf": {"method": "ssf"},
    "kwyn": {"method": "kwyn", "sparsity": {"ratio": 0.5}},
    "hardconcrete": {"method": "hardconcrete", "hardconcrete": {"ratio": 0.5, "lr": 1.0, "init_drop": 0.5}},
    "lottery": {"method": "lottery", "lottery": {"rounds": 1, "share": 0.3}},
    "convexity": {"method": "convexity", "backbone": "whisper-tiny-encoder",  # a CNN has no layers to drop
                  "convexity": {"k": 3, "examples": 9, "layers": 2}},
}


def test_the_registry_and_the_specs_list_the_same_methods():
    assert set(METHODS) == set(SPECS) | {"scratch"}  # scratch: from a kwyn run, in test_methods.py


@pytest.mark.parametrize("name", list(SPECS))
def test_every_method_runs_a_step_and_trims_exactly(tmp_path, tiny_data, name):
    raw = tiny_params(steps=3)
    raw["experiments"] = {name: {**TINY, **SPECS[name]}}
    exp = experiment(name, validate(raw))
    run_dir, model_dir = tmp_path / "runs" / name, tmp_path / "models" / name
    summary = train(exp, tiny_data, run_dir, progress=False)
    assert summary["steps"] >= 3 and (run_dir / "best.pt").exists()
    trim_run(exp, run_dir, model_dir)
    result = evaluate_run(exp, tiny_data, run_dir, model_dir, progress=False)
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-5
    assert (result["trim_ratio"] > 0) == METHODS[name].removes_units, result["trim_ratio"]


def test_every_modulation_set_attaches_detaches_and_says_what_it_removes():
    backbone = load_backbone("crepe-tiny")
    audio = torch.randn(2, 1024)
    before = backbone.embed(audio)
    for name, method in METHODS.items():
        cls = method.modulation_set()
        if cls is None:
            continue
        assert issubclass(cls, SiteModulationSet) and modulation_set(cls.kind) is cls
        exp = experiment("tiny_kwyn", validate(tiny_params()))
        modulations = cls.for_run(backbone.mask_sites(), exp.train)
        handles = modulations.attach(backbone)
        assert len(handles) == len(backbone.mask_sites())
        modulations.eval()
        kept = modulations.kept_units()
        assert (kept is None) == (not method.removes_units), name
        modulations.detach()
        torch.testing.assert_close(backbone.embed(audio), before)  # detached: the encoder as it was


def test_a_block_of_another_method_is_refused():
    raw = tiny_params()
    raw["experiments"]["hc"] = {**TINY, "method": "hardconcrete", "hardconcrete": {"ratio": 0.5},
                                "sparsity": {"ratio": 0.5}}
    with pytest.raises(ParamsError, match="a 'sparsity' block belongs to 'kwyn', not method 'hardconcrete'"):
        validate(raw)
    raw["experiments"]["hc"] = {**TINY, "method": "hardconcrete"}
    with pytest.raises(ParamsError, match="method 'hardconcrete' needs a 'hardconcrete' block"):
        validate(raw)


# -- HardConcrete ------------------------------------------------------------------------------------------------

def gates_of(backbone, **kwargs):
    gates = HardConcreteSet(backbone.mask_sites())
    gates.constrain(backbone.trimmed_param_counter(), backbone.param_count(), target=0.5, ramp_steps=10,
                    lr=kwargs.get("lr", 0.1))
    return gates


def test_expected_ratio_is_the_exact_ratio_when_the_gates_are_certain():
    backbone = load_backbone("crepe-tiny")
    gates = gates_of(backbone)
    keep = {name: torch.arange(0, gate.site.units, 3) for name, gate in gates.by_site().items()}
    with torch.no_grad():
        for name, gate in gates.by_site().items():
            gate.log_alpha.fill_(-30.0)
            gate.log_alpha[keep[name]] = 30.0
    exact = 1 - backbone.trimmed_param_count(keep) / backbone.param_count()
    assert float(gates.expected_ratio().detach()) == pytest.approx(exact, abs=1e-6)
    gates.eval()
    assert {k: v.tolist() for k, v in gates.kept_units().items()} == {k: v.tolist() for k, v in keep.items()}


def test_keep_probability_matches_the_sampled_gates():
    """P(z != 0) of the stretched, clipped concrete distribution, against the share of sampled gates above 0."""
    backbone = load_backbone("crepe-tiny")
    gate = next(iter(gates_of(backbone).values()))
    with torch.no_grad():
        gate.log_alpha.copy_(torch.linspace(-3, 3, gate.site.units))
    torch.manual_seed(0)
    share = torch.stack([gate.sample() > 0 for _ in range(4000)]).float().mean(0)
    torch.testing.assert_close(share, gate.keep_probability().detach(), atol=0.03, rtol=0)
    samples = torch.stack([gate.sample() for _ in range(200)])
    assert ((samples == 0) | (samples == 1)).float().mean() > 0.2  # exact zeros and ones: the clipping


def test_the_lagrangian_target_ramps_and_its_multipliers_ascend():
    backbone = load_backbone("crepe-tiny")
    gates = gates_of(backbone)
    assert gates.target_at(0) == 0 and gates.target_at(5) == pytest.approx(0.25) and gates.target_at(50) == 0.5
    groups = gates.param_groups(None)
    assert [g["name"] for g in groups] == ["masks", "lagrangian"] and groups[1]["lr"] == -groups[0]["lr"]
    optimizer = torch.optim.Adam(groups)
    alpha_before = torch.cat([g.log_alpha.detach().clone() for g in gates.values()])
    gap = float(gates.expected_ratio().detach()) - gates.target_at(10)
    assert gap < 0  # every gate starts nearly surely on: far less removed than the target
    gates.penalty(10).backward()
    optimizer.step()
    # ascent: lambda1 moves so that lambda1 * gap grows (negative here); log_alpha descends: more units off
    assert float(gates.lambdas[0].detach()) * gap > 0
    optimizer.zero_grad()
    gates.penalty(10).backward()
    optimizer.step()
    assert (torch.cat([g.log_alpha.detach() for g in gates.values()]) < alpha_before).all()


def test_hardconcrete_training_moves_the_expected_ratio_to_the_target(tmp_path, tiny_data):
    raw = tiny_params(steps=30, eval_every=10, checkpoint_every=10)
    raw["experiments"] = {"hc": {**TINY, "method": "hardconcrete", "hardconcrete": {"ratio": 0.5, "lr": 0.5,
                                                                                    "ratio_ramp": 0.3}}}
    exp = experiment("hc", validate(raw))
    assert exp.target_ratio == 0.5
    summary = train(exp, tiny_data, tmp_path / "hc", progress=False)
    history = pd.read_csv(tmp_path / "hc" / "history.csv")
    assert history.trim_ratio.iloc[0] < 0.5 <= history.trim_ratio.max()  # from dense to the target
    # selected only among validations that remove the target (within 2 points)
    assert summary["selected"]["trim_ratio"] >= 0.48 and not math.isnan(summary["selected"]["val_metric"])
    eligible = history[(history.trim_ratio >= 0.48) & (history.step >= 15)]  # select_after: half the steps
    assert summary["selected"]["val_metric"] == eligible.val_metric.max()

"""The grid's methods through the real training loop: SSF, scratch, ratio control, lottery, convexity, DDP."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_params

from kwyn.evaluate import evaluate_run, trim_run
from kwyn.params import experiment, validate
from kwyn.runs import load_trained
from kwyn.train import train
from kwyn.trim import load_trimmed

TINY = {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch"}


def grid(steps=6, scratch=None, **experiments):
    raw = tiny_params(steps=steps)
    raw["experiments"].update({name: {**TINY, **spec} for name, spec in experiments.items()})
    raw["scratch"] = scratch or {}
    return validate(raw)


def run(exp, data, root: Path, source=None):
    train(exp, data, root / "runs" / exp.name, progress=False,
          source_model_dir=root / "models" / source if source else None)
    trim_run(exp, root / "runs" / exp.name, root / "models" / exp.name)
    return evaluate_run(exp, data, root / "runs" / exp.name, root / "models" / exp.name, progress=False)


def test_ssf_starts_as_the_frozen_model_learns_only_scale_shift_and_head_and_is_saved_with_them(tmp_path, tiny_data):
    from kwyn.ssf import ScaleShiftSet
    from kwyn.runs import frozen_backbone

    exp = experiment("ssf", grid(ssf={"method": "ssf"}))
    backbone = frozen_backbone(exp)
    audio = torch.randn(3, 1024)
    before = backbone.embed(audio)
    ssf = ScaleShiftSet(backbone.mask_sites())
    ssf.attach(backbone)
    torch.testing.assert_close(backbone.embed(audio), before)  # scale 1, shift 0: the frozen model
    with torch.no_grad():
        ssf["conv3"].shift[0] = 1.0
    assert not torch.allclose(backbone.embed(audio), before)  # a shift reaches the output

    result = run(exp, tiny_data, tmp_path)
    model, modulations, best = load_trained(exp, tmp_path / "runs" / "ssf")
    assert best["encoder"] is None and not any(p.requires_grad for p in model.backbone.parameters())
    assert any((m.scale != 1).any() or (m.shift != 0).any() for m in modulations.values())  # they learned
    reloaded = load_trimmed(tmp_path / "models" / "ssf")  # rebuilt with its scale-and-shift re-attached
    assert reloaded.config["modulations"] == "ssf"
    torch.testing.assert_close(reloaded(audio), model(audio))
    assert result["trim_ratio"] == 0 and result["max_abs_diff_masked_vs_trimmed"] < 1e-5


def test_scratch_trains_the_kept_architecture_from_random_weights(tmp_path, tiny_data):
    params = grid(kwyn={"method": "kwyn", "sparsity": {"loss": "paper", "t": 0.5, "lambda": 1.0, "ratio": 0.5}},
                  scratch={"scr": {"from": "kwyn"}})
    source = run(experiment("kwyn", params), tiny_data, tmp_path)
    exp = experiment("scr", params)
    assert exp.method == "scratch" and exp.source == "kwyn" and exp.target_ratio == 0.5
    result = run(exp, tiny_data, tmp_path, source="kwyn")

    kept = load_trimmed(tmp_path / "models" / "kwyn").config["kept_units"]
    model = load_trimmed(tmp_path / "models" / "scr")
    assert model.config["kept_units"] == kept  # the same architecture as the kwyn model ...
    assert result["params"] == source["params"] and result["trim_ratio"] == pytest.approx(source["trim_ratio"])
    pretrained = load_trimmed(tmp_path / "models" / "kwyn").backbone.state_dict()
    trained = model.backbone.state_dict()
    assert not torch.allclose(trained["conv2.weight"], pretrained["conv2.weight"])  # ... with its own weights
    _, _, best = load_trained(exp, tmp_path / "runs" / "scr")
    assert best["encoder"] is not None  # the encoder was trained
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-5


def test_scratch_needs_a_kwyn_source():
    raw = tiny_params()
    raw["scratch"] = {"scr": {"from": "tiny_base"}}
    with pytest.raises(ValueError, match=r"scratch.scr.from: 'tiny_base' is not a kwyn experiment"):
        validate(raw)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_ratio_control_lands_within_two_points_of_the_requested_ratio(tmp_path, tiny_data, ratio):
    exp = experiment("r", grid(steps=8, r={"method": "kwyn",
                                           "sparsity": {"loss": "paper", "t": 0.5, "lambda": 1.0, "ratio": ratio}}))
    result = run(exp, tiny_data, tmp_path)
    assert abs(result["trim_ratio"] - ratio) <= 0.02, result["trim_ratio"]
    assert result["target_ratio"] == ratio and result["max_abs_diff_masked_vs_trimmed"] < 1e-5


def test_ratio_control_ramps_the_target_and_counts_parameters_exactly(tiny_data):
    from kwyn.backbones import load_backbone
    from kwyn.masks import MaskSet, RatioControl

    backbone = load_backbone("crepe-tiny")
    masks = MaskSet(backbone.mask_sites())
    control = RatioControl(backbone, masks, target=0.6, total_steps=100, ramp=0.5, every=1)
    assert control.target_at(0) == 0 and control.target_at(25) == pytest.approx(0.3) and control.target_at(80) == 0.6
    for step, target in [(0, 0.0), (25, 0.3), (50, 0.6)]:
        control.update(step, force=True)
        achieved = 1 - backbone.trimmed_param_count(masks.kept_units()) / backbone.param_count()
        assert target <= achieved <= target + 0.02
        # the kept units are the highest logits: every kept logit is above every removed one
        logits = torch.cat([m.logits for m in masks.values()])
        kept = torch.cat([m.logits > m.threshold for m in masks.values()])
        if kept.any() and (~kept).any():
            assert logits[kept].min() > logits[~kept].max()


@pytest.mark.parametrize("backbone_name", ["crepe-tiny", "whisper-tiny-encoder"])
def test_ratio_control_keeps_widths_in_multiples_and_still_lands_on_the_ratio(backbone_name):
    from kwyn.backbones import load_backbone
    from kwyn.masks import MaskSet, RatioControl

    backbone = load_backbone(backbone_name)
    masks = MaskSet(backbone.mask_sites())
    with torch.no_grad():  # a ranking that differs per site, so that rounding has something to do
        for i, mask in enumerate(masks.values()):
            mask.logits.copy_(torch.randn(mask.logits.shape, generator=torch.Generator().manual_seed(i)))
    control = RatioControl(backbone, masks, target=0.5, total_steps=10, ramp=0.1, every=1, multiple_of=8)
    control.update(5, force=True)
    kept = masks.kept_units()
    for site in backbone.mask_sites():
        n = len(kept[site.name])
        assert site.kind == "attention_heads" or n % 8 == 0 or n == site.units, (site.name, n)
        # within a site, the kept units are its highest logits
        logits, on = masks[site.name].logits, torch.zeros(site.units, dtype=torch.bool)
        on[kept[site.name]] = True
        if on.any() and (~on).any():
            assert logits[on].min() > logits[~on].max()
    achieved = 1 - backbone.trimmed_param_count(kept) / backbone.param_count()
    assert 0.5 <= achieved <= 0.53, achieved


def _assert_widths_in_multiples(backbone, kept, multiple):
    for site in backbone.mask_sites():
        n = len(kept[site.name])
        assert site.kind == "attention_heads" or n % multiple == 0 or n == site.units, (site.name, n)


@pytest.mark.parametrize("backbone_name", ["crepe-tiny", "whisper-tiny-encoder"])
def test_a_lottery_round_keeps_widths_in_multiples_and_each_site_its_best_scored_units(backbone_name):
    from kwyn.backbones import load_backbone
    from kwyn.lottery import prune_round

    backbone = load_backbone(backbone_name)
    sites = backbone.mask_sites()
    scores = {s.name: torch.rand(s.units, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(sites)}
    every = {s.name: torch.arange(s.units) for s in sites}
    plain = prune_round(scores, every, 0.3)
    rounded = prune_round(scores, every, 0.3, sites=sites, multiple_of=8)
    _assert_widths_in_multiples(backbone, rounded, 8)
    for site in sites:  # rounding only takes away, each site's lowest-scored first
        a, b = set(plain[site.name].tolist()), set(rounded[site.name].tolist())
        assert b <= a and len(a) - len(b) < 8
        if a - b and b:
            assert max(scores[site.name][sorted(a - b)]) <= min(scores[site.name][sorted(b)])
    assert any(len(plain[s.name]) != len(rounded[s.name]) for s in sites)  # there was something to round
    with pytest.raises(ValueError, match="multiple_of needs the sites"):
        prune_round(scores, every, 0.3, multiple_of=8)


@pytest.mark.parametrize("backbone_name", ["crepe-tiny", "whisper-tiny-encoder"])
def test_hardconcrete_gates_keep_widths_in_multiples_also_once_reloaded(backbone_name):
    from kwyn.backbones import load_backbone
    from kwyn.hardconcrete import HardConcreteSet

    backbone = load_backbone(backbone_name)
    gates = HardConcreteSet(backbone.mask_sites(), multiple_of=8)
    with torch.no_grad():  # expected widths that are not multiples of 8
        for i, gate in enumerate(gates.values()):
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=torch.Generator().manual_seed(i)))
    kept = gates.kept_units()
    _assert_widths_in_multiples(backbone, kept, 8)
    plain = HardConcreteSet(backbone.mask_sites())
    state = {k: v for k, v in gates.state_dict().items() if not k.endswith("multiple_of")}
    plain.load_state_dict(state)  # a gate saved before the option existed: every width as it comes
    unrounded = plain.kept_units()
    assert any(len(unrounded[n]) != len(kept[n]) for n in kept)
    reloaded = HardConcreteSet(backbone.mask_sites())  # as kwyn.runs.load_trained rebuilds a run's gates
    reloaded.load_state_dict(gates.state_dict())
    assert all(torch.equal(reloaded.kept_units()[n], kept[n]) for n in kept)
    for name, gate in gates.by_site().items():  # the kept units are the largest log_alpha of their site
        on = torch.zeros(gate.log_alpha.numel(), dtype=torch.bool)
        on[kept[name]] = True
        if on.any() and (~on).any():
            assert gate.log_alpha[on].min() >= gate.log_alpha[~on].max()


@pytest.mark.parametrize("name", ["crepe-tiny", "whisper-tiny-encoder", "wavlm-base", "musicfm", "clap-cnn14"])
def test_fast_param_counter_equals_exact_counts(name):
    # wavlm-base: its projection gains one column when conv 6 loses its first channel (the jump the counter models)
    from kwyn.backbones import BACKBONES, build_backbone, load_backbone

    if name == "whisper-tiny-encoder":
        backbone = load_backbone(name)
    else:
        family, config = BACKBONES[name]
        with torch.device("meta"):
            backbone = build_backbone({"family": family, **config})
    counter = backbone.trimmed_param_counter(seed=1)
    assert counter.fitted
    units = {s.name: s.units for s in backbone.mask_sites()}
    generator = torch.Generator().manual_seed(7)
    widths = [units, {n: 0 for n in units}, {n: max(u - 1, 0) for n, u in units.items()}]
    widths += [{n: int(torch.randint(0, u + 1, (1,), generator=generator)) for n, u in units.items()} for _ in range(3)]
    for counts in widths:
        assert counter(counts) == backbone.trimmed_param_count({n: torch.arange(k) for n, k in counts.items()})


def test_param_counter_falls_back_to_exact_counting_where_the_rule_breaks():
    from kwyn.backbones.crepe import CrepeBackbone

    class SquaredExtra(CrepeBackbone):  # a parameter of conv1-width squared elements: no fixed step per unit
        def trim(self, keep):
            super().trim(keep)
            self.extra = torch.nn.Parameter(torch.empty(len(keep["conv1"]) ** 2))

    with torch.device("meta"):
        backbone = SquaredExtra({"capacity": "tiny"})
    counter = backbone.trimmed_param_counter()
    assert not counter.fitted
    counts = {s.name: s.units // 3 for s in backbone.mask_sites()}
    assert counter(counts) == backbone.trimmed_param_count({n: torch.arange(k) for n, k in counts.items()})


def test_one_lottery_round_removes_the_share_and_its_trimmed_model_equals_the_masked_one(tmp_path, tiny_data):
    exp = experiment("lt", grid(lt={"method": "lottery",
                                    "lottery": {"rounds": 2, "share": 0.2, "steps": 4, "rewind_step": 1}}))
    result = run(exp, tiny_data, tmp_path)
    total = sum(result["site_units"].values())
    kept = [sum(r["kept_units"].values()) for r in result["rounds"]]
    assert kept[0] == total
    assert kept[1] == total - round(0.2 * total)  # round 1 removes 20 % of the units
    assert kept[2] == kept[1] - round(0.2 * kept[1])  # round 2, 20 % of those left
    assert all(r["max_abs_diff_masked_vs_trimmed"] < 1e-5 for r in result["rounds"])
    assert result["rounds"][0]["trim_ratio"] == 0 < result["rounds"][1]["trim_ratio"] < result["rounds"][2]["trim_ratio"]
    assert result["trim_ratio"] == result["rounds"][-1]["trim_ratio"]
    # the top-level model is the last round's, and loads as such
    top, last = (load_trimmed(tmp_path / "models" / "lt" / sub) for sub in ("", "rounds/round2"))
    assert top.config["kept_units"] == last.config["kept_units"]
    assert all(torch.equal(a, b) for a, b in zip(top.state_dict().values(), last.state_dict().values()))
    # so is the run's top level: its kept-units log too (02_train_masks' figure reads it there)
    for name in ("history.csv", "kept_units.csv"):
        assert (tmp_path / "runs" / "lt" / name).read_bytes() == (tmp_path / "runs" / "lt" / "round2" / name).read_bytes()
    # every round restarts from the rewind point: round 2's weights came from round 0's step 1, not round 1's end
    rewind = torch.load(tmp_path / "runs" / "lt" / "round0" / "rewind.pt", weights_only=False)
    assert rewind["encoder"] is not None and rewind["head"] is not None


def test_convexity_drops_the_layers_after_the_most_convex_one(tmp_path, tiny_data):
    exp = experiment("cx", grid(cx={"method": "convexity", "backbone": "whisper-tiny-encoder",
                                    "convexity": {"k": 3, "examples": 9}}))
    result = run(exp, tiny_data, tmp_path)
    scores = result["convexity"]["scores"]
    assert len(scores) == 4 and all(0 <= s <= 1 for s in scores)  # whisper tiny: 4 layers
    layers = max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1
    assert result["convexity"]["kept_layers"] == result["layers"] == layers
    model = load_trimmed(tmp_path / "models" / "cx")
    assert len(model.backbone.encoder.layers) == layers
    assert (result["params"] < result["full_params"]) == (layers < 4)
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-5


WORKER = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_params
from kwyn.params import experiment, validate
from kwyn.train import train
raw = tiny_params(steps=4)
exp = experiment("tiny_kwyn", validate(raw))
train(exp, {data!r}, sys.argv[1], progress=False)
"""


def test_ddp_on_cpu_with_two_processes_trains_like_one_process_on_the_whole_batch(tmp_path, tiny_data):
    """torchrun, gloo, 2 ranks: each rank takes half of every batch; DDP averages the gradients, so the
    masks and head equal those of one process on the whole batch."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(ROOT / "tests"), data=str(tiny_data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single")], check=True, env=env, timeout=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(port), str(script), str(tmp_path / "ddp")],
                          env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert ddp["state"]["step"] == single["state"]["step"] == 4
    for key, value in single["learner"].items():
        torch.testing.assert_close(ddp["learner"][key], value, atol=1e-5, rtol=1e-4)
    moved = [k for k in single["learner"] if "logits" in k]
    assert moved and any((single["learner"][k] != 1.0).any() for k in moved)  # the masks did learn

"""What the stage notebooks show of a run (kwyn.anatomy), on CREPE-tiny and rendered notes."""
import pandas as pd
import pytest
import torch
from conftest import tiny_params

from kwyn import anatomy
from kwyn.data.prepare import PreparedDataset
from kwyn.evaluate import evaluate_run, trim_run
from kwyn.masks import MaskSet
from kwyn.methods import method_of
from kwyn.params import experiment, validate
from kwyn.runs import frozen_backbone, load_trained
from kwyn.train import train
from kwyn.trim import load_trimmed


def tiny(name="tiny_kwyn", ratio=None, **train_overrides):
    params = tiny_params(**train_overrides)
    if ratio is not None:
        params["experiments"][name]["sparsity"]["ratio"] = ratio
    return experiment(name, validate(params))


def test_settings_are_the_resolved_experiment_flattened_without_unset_keys():
    exp = tiny(ratio=0.5, steps=7)
    table = anatomy.settings(exp)
    assert table.loc["train.steps", "value"] == "7"  # params.yaml's shared train block, with the override
    assert table.loc["sparsity.ratio", "value"] == "0.5" and table.loc["sparsity.lambda", "value"] == "50.0"
    assert "recipe" not in " ".join(table.index) and not table.index.str.startswith("dataset_params").any()


def test_the_straight_through_estimator_hands_every_site_a_gradient_while_all_units_are_on(tiny_data):
    exp = tiny()
    train_set = PreparedDataset(tiny_data, "train", exp.task)
    learner = method_of(exp).learner(exp, train_set)
    gradients = anatomy.mask_gradients(learner, anatomy.training_batch(exp, train_set), train_set)
    assert (gradients.units_on == gradients.units).all()  # round(sigmoid(1.0)) = 1 everywhere
    assert (gradients.grad_norm > 0).all()  # rounding has zero derivative: only the STE gives these
    assert all(p.grad is None for p in learner.parameters())  # cleared afterwards
    # the same gradient by hand, for one site
    audio, lengths, targets = anatomy.training_batch(exp, train_set)
    learner.train()
    torch.nn.functional.cross_entropy(learner(audio, lengths), targets).backward()
    site = gradients.index[0]
    assert learner.modulations[site].logits.grad.norm().item() == pytest.approx(gradients.grad_norm[site], rel=1e-5)


def test_a_training_batch_is_drawn_apart_from_the_runs_own_draws(tiny_data):
    exp = tiny()
    train_set = PreparedDataset(tiny_data, "train", exp.task)
    before = torch.get_rng_state()
    first, second = anatomy.training_batch(exp, train_set), anatomy.training_batch(exp, train_set)
    assert torch.equal(first[0], second[0]) and torch.equal(torch.get_rng_state(), before)


def test_ratio_control_cut_removes_the_requested_share_exactly_counted(tiny_data):
    exp = tiny(ratio=0.5)
    train_set = PreparedDataset(tiny_data, "train", exp.task)
    learner = method_of(exp).learner(exp, train_set)
    cut = anatomy.ratio_control_cut(learner, exp)
    backbone = learner.model.backbone
    kept = {site: learner.modulations[site].kept().tolist() for site in cut.index}
    assert cut.kept.to_dict() == {site: len(units) for site, units in kept.items()}
    assert cut.attrs["removed"] == pytest.approx(1 - backbone.trimmed_param_count(kept) / backbone.param_count())
    assert abs(cut.attrs["removed"] - 0.5) < 0.02
    with pytest.raises(ValueError, match="sparsity.ratio"):
        anatomy.ratio_control_cut(learner, tiny())


def test_kept_units_are_logged_at_every_validation_and_end_at_the_selected_masks(tmp_path, tiny_data):
    exp = tiny(ratio=0.5, steps=9)
    train(exp, tiny_data, tmp_path, progress=False)
    rows = pd.read_csv(tmp_path / "kept_units.csv")
    history = pd.read_csv(tmp_path / "history.csv")
    assert sorted(set(rows.step)) == list(history.step) == [3, 6, 9]
    for step, group in rows.groupby("step"):  # each validation's kept count is the history's
        assert group.kept.sum() == history.set_index("step").kept_units[step]
    share = anatomy.kept_share(tmp_path)
    assert list(share.columns) == [3, 6, 9] and share.shape[0] == rows.site.nunique()
    assert ((share >= 0) & (share <= 1)).all().all()
    _, masks, best = load_trained(exp, tmp_path)
    last = rows[rows.step == best["row"]["step"]].set_index("site").kept
    assert last.to_dict() == {site: len(units) for site, units in masks.kept_units().items()}
    logits = anatomy.mask_logits(masks)
    assert logits.kept.sum() == masks.kept_count and ((logits.margin > 0) == logits.kept).all()


def test_a_run_that_removes_nothing_has_no_kept_share(tmp_path, tiny_data):
    train(tiny("tiny_base", steps=3), tiny_data, tmp_path, progress=False)
    assert not (tmp_path / "kept_units.csv").exists() and anatomy.kept_share(tmp_path).empty


@pytest.mark.parametrize("name, layer", [("layers.3.fc1.weight", "layers.3"), ("conv2.weight", "conv2"),
                                         ("encoder.layers.11.attn.k.bias", "encoder.layers.11"), ("bias", "bias")])
def test_layer_of_a_parameter_name(name, layer):
    assert anatomy.layer_of(name) == layer


def test_parameters_by_layer_add_up_and_cost_table_compares_full_and_trimmed(tmp_path, tiny_data):
    exp = tiny(ratio=0.5, steps=6)
    train(exp, tiny_data, tmp_path / "run", progress=False)
    trim_run(exp, tmp_path / "run", tmp_path / "model", tiny_data)
    full, trimmed = frozen_backbone(exp), load_trimmed(tmp_path / "model").backbone
    layers = anatomy.parameters_by_layer(full, trimmed)
    assert layers.full.sum() == full.param_count() and layers.trimmed.sum() == trimmed.param_count()
    assert list(layers.index)[:2] == ["conv1", "conv1_BN"]  # the encoder's order
    assert layers.removed.between(0, 1).all() and (layers.removed > 0).any()
    result = evaluate_run(exp, tiny_data, tmp_path / "run", tmp_path / "model", progress=False)
    cost = anatomy.cost_table(result)
    assert cost.loc["parameters (M)", "full"] == pytest.approx(full.param_count() / 1e6)
    assert cost.loc["latency (ms)", "full / trimmed"] == pytest.approx(result["speedup"])
    assert cost.loc["GFLOPs", "full / trimmed"] == pytest.approx(result["flops_ratio"])
    assert isinstance(load_trained(exp, tmp_path / "run")[1], MaskSet)


def test_parameters_by_layer_names_layers_after_a_prefix_every_parameter_shares():
    from torch import nn

    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.conv1 = nn.Conv1d(2, 3, 1)
    model.encoder.layers = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 2)])
    layers = anatomy.parameters_by_layer(model, model)
    assert list(layers.index) == ["conv1", "layers.0", "layers.1"]
    assert layers.full.tolist() == [9, 12, 8] and (layers.removed == 0).all()

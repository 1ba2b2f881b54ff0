"""kwyn.recipe: head warm-up, distillation from the cached full encoder and re-fit, each doing what it claims."""
import pandas as pd
import pytest
import torch
from conftest import tiny_params, train_killed_after

from kwyn import distributed
from kwyn.data.prepare import PreparedDataset
from kwyn.masks import MaskSet
from kwyn.metrics import task_type
from kwyn.model import predict, task_model
from kwyn.params import ParamsError, Recipe, experiment, validate
from kwyn.heads import MLPHead
from kwyn.recipe import (EmbeddingCache, Schedule, Standardized, distillation_loss, gradient_importance,
                         importance_logits, unit_costs)
from kwyn import loop
from kwyn.loop import Learner, _trimmed_twin, fit, validation_indices
from kwyn.runs import frozen_backbone, load_trained
from kwyn.train import train


def tiny_kwyn(recipe=None, ratio=0.5, lambda_=1.0, ramp=0.5, **train_overrides):
    raw = tiny_params(**train_overrides)
    raw["experiments"]["tiny_kwyn"]["sparsity"] = {"loss": "paper", "t": 0.5, "lambda": lambda_, "ratio": ratio,
                                                   "ratio_ramp": ramp}
    if ramp > raw["train"]["select_after"]:  # params refuse selecting a checkpoint from before the ramp's end
        raw["experiments"]["tiny_kwyn"]["train"] = {"select_after": ramp}
    if recipe is not None:
        raw["experiments"]["tiny_kwyn"]["recipe"] = recipe
    return experiment("tiny_kwyn", validate(raw))


def test_schedule_puts_the_warmup_before_the_steps_and_the_refit_at_their_end():
    schedule = Schedule.of(200, Recipe(head_warmup=20, refit=40))
    assert (schedule.steps, schedule.mask_start, schedule.refit_start, schedule.mask_steps) == (260, 20, 220, 200)
    assert [schedule.phase(s) for s in (0, 19, 20, 219, 220, 259)] == ["head"] * 2 + ["masks"] * 2 + ["refit"] * 2
    assert Schedule.of(200) == Schedule(200, 0, 200)  # no recipe: every step trains the masks


def test_recipe_is_validated():
    raw = tiny_params()
    raw["experiments"]["tiny_base"]["recipe"] = {"distill": 1.0}
    with pytest.raises(ParamsError, match="a 'recipe' block belongs to 'kwyn', not method 'base'"):
        validate(raw)
    with pytest.raises(ValueError, match="refit"):
        Recipe(refit=0.5)  # a number of steps
    with pytest.raises(ValueError, match="distil"):
        Recipe(distil=1.0)  # a misspelt key names the allowed ones


def test_distillation_loss_is_the_relative_squared_error():
    teacher = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert distillation_loss(teacher.clone(), teacher) == 0
    assert distillation_loss(torch.zeros(2, 2), teacher) == pytest.approx(1.0)
    student = torch.tensor([[3.0, 0.0], [0.0, 3.0]])  # errors 16 and 9 over ||t||^2 = 25
    assert distillation_loss(student, teacher) == pytest.approx(1.0)
    assert distillation_loss(10 * student, 10 * teacher) == pytest.approx(1.0)  # scale-free


def _learner(exp, data):
    train_set = PreparedDataset(data, "train", exp.task)
    backbone = frozen_backbone(exp)
    _, ttype = task_type(train_set, exp.name)
    masks = MaskSet(backbone.mask_sites(), exp.train.mask_init)
    return Learner(task_model(backbone, ttype.make_head(backbone.embedding_dim, train_set)), masks, False), train_set


def test_cached_teacher_targets_equal_recomputed_ones(tiny_data):
    exp = tiny_kwyn()
    learner, train_set = _learner(exp, tiny_data)
    masks = learner.modulations
    with torch.no_grad():
        for mask in masks.values():  # a student that differs from the teacher: half of every site off
            mask.logits[: mask.logits.numel() // 2] = -1.0
    teacher = EmbeddingCache(learner.model, masks, train_set, batch_size=3)  # chunks that split the set unevenly
    assert len(teacher) == 0  # nothing is embedded before the first call
    first = teacher([2, 0, 2])
    assert len(teacher) == len(train_set) and torch.equal(first[0], first[2])
    again = teacher([0, 2])
    assert torch.equal(again, first[[1, 0]])  # served from the cache
    resumed = EmbeddingCache(learner.model, masks, train_set, batch_size=3)([0, 2])
    assert torch.equal(resumed, again)  # a fresh cache (a resumed run) recomputes the very same values
    full = frozen_backbone(exp)  # a fresh encoder with no mask attached
    with torch.no_grad():
        recomputed = full.embed(torch.stack([train_set[i][0] for i in (2, 0)]))
        masked = learner.model.features(torch.stack([train_set[i][0] for i in (2, 0)]))
    torch.testing.assert_close(again, recomputed[[1, 0]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(masked, recomputed, atol=1e-3)  # the student's masks were on throughout


def test_a_recipe_with_every_option_off_leaves_the_run_identical(tmp_path, tiny_data):
    train(tiny_kwyn(steps=9), tiny_data, tmp_path / "paper", progress=False)
    train(tiny_kwyn({"head_warmup": 0, "distill": 0, "refit": 0}, steps=9), tiny_data, tmp_path / "off",
          progress=False)
    paper, off = (pd.read_csv(tmp_path / d / "history.csv") for d in ("paper", "off"))
    assert list(paper.columns) == ["step", "loss", "task_loss", "sparsity_loss", "val_metric", "trim_ratio",
                                   "kept_units"]
    pd.testing.assert_frame_equal(paper, off[paper.columns])
    a, b = (torch.load(tmp_path / d / "best.pt", weights_only=False) for d in ("paper", "off"))
    for key in a["modulations"]:
        assert torch.equal(a["modulations"][key], b["modulations"][key])


class Record(list):
    learner: Learner


def _fit_recording(exp, data, run_dir):
    """fit() on a fresh learner, recording the mask logits, thresholds and head weights after every step."""
    learner, train_set = _learner(exp, data)
    valid_set = PreparedDataset(data, "valid", exp.task)
    record = Record()

    def on_step(step):
        record.append({"logits": torch.cat([m.logits.detach().clone() for m in learner.modulations.values()]),
                       "threshold": float(next(iter(learner.modulations.values())).threshold),
                       "head": torch.cat([p.detach().flatten().clone() for p in learner.model.head.parameters()])})

    fit(exp, learner, train_set, valid_set, run_dir, architecture={"init": "pretrained"},
        steps=exp.train.steps, runtime=distributed.setup("cpu", "fp32"), progress=False, on_step=on_step)
    record.learner = learner  # its final state: the last validation's
    return record


def test_head_warmup_trains_the_head_alone_before_the_masks_and_the_ramp(tmp_path, tiny_data):
    exp = tiny_kwyn({"head_warmup": 4}, steps=4, eval_every=4)
    record = _fit_recording(exp, tiny_data, tmp_path)
    warm = record[:4]  # steps 1-4
    assert all(torch.equal(r["logits"], warm[0]["logits"]) for r in warm)  # no mask moved
    assert not torch.equal(warm[0]["head"], warm[-1]["head"])  # the head did
    assert not torch.equal(record[-1]["logits"], warm[-1]["logits"])  # the masks learn afterwards
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.step) == [8] and list(history.phase) == ["masks"]  # no validation during the warm-up
    assert history.trim_ratio.iloc[0] == pytest.approx(0.5, abs=0.05)


def test_refit_freezes_the_masks_and_trains_the_head_on_what_they_keep(tmp_path, tiny_data):
    # the ramp spans every mask step, and the last validation before the re-fit comes before its end
    exp = tiny_kwyn({"refit": 4}, ramp=1.0, steps=4, eval_every=3)
    record = _fit_recording(exp, tiny_data, tmp_path)
    refit = record[4:]  # steps 5-8
    assert all(torch.equal(r["logits"], record[3]["logits"]) for r in refit)
    assert all(r["threshold"] == refit[0]["threshold"] for r in refit)  # the kept units are fixed
    assert not torch.equal(refit[0]["head"], refit[-1]["head"])
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.phase) == ["masks", "refit", "refit"]
    assert history.trim_ratio.iloc[1] == history.trim_ratio.iloc[2] == pytest.approx(0.5, abs=0.05)
    # the re-fit trains and validates a physically trimmed copy of the encoder; the masked model scores the same
    valid_set = PreparedDataset(tiny_data, "valid", exp.task)
    _, ttype = task_type(valid_set, exp.name)
    indices = validation_indices(exp.train, len(valid_set))
    masked = record.learner.eval().model
    rescored = ttype.score(predict(masked, valid_set, 32, indices), valid_set, indices)[ttype.primary]
    assert rescored == pytest.approx(history.val_metric.iloc[-1])
    with torch.no_grad():  # and its embeddings are those of the masks' units, at the ratio they reached
        audio = torch.stack([valid_set[i][0] for i in indices])
        twin = _trimmed_twin(exp, masked, record.learner.modulations, {"init": "pretrained"}, distributed.setup("cpu", "fp32"))
        torch.testing.assert_close(twin.features(audio), masked.features(audio), rtol=1e-4, atol=1e-5)


def _count_refit_encoder_clips(monkeypatch):
    """Clips the re-fit's trimmed encoder embeds, counted by wrapping `features` of the real twin fit() builds."""
    seen = []

    def counted(*args, **kwargs):
        twin = _trimmed_twin(*args, **kwargs)
        features = twin.features

        def counting(audio, lengths=None):
            seen.append(len(audio))
            return features(audio, lengths)
        twin.features = counting  # the real encoder runs; only the clips it gets are counted
        return twin
    monkeypatch.setattr(loop, "_trimmed_twin", counted)
    return seen


@pytest.mark.parametrize("cached", [False, True])
def test_refit_cache_embeds_each_clip_once_and_refit_batch_size_sizes_the_steps(tmp_path, tiny_data, monkeypatch,
                                                                                 cached):
    recipe = {"refit": 6, "refit_batch_size": 5, "refit_cache": cached}
    exp = tiny_kwyn(recipe, ramp=1.0, steps=4, eval_every=3)
    seen = _count_refit_encoder_clips(monkeypatch)
    record = _fit_recording(exp, tiny_data, tmp_path)
    assert all(torch.equal(r["logits"], record[3]["logits"]) for r in record[4:])  # the masks stay frozen
    assert not torch.equal(record[4]["head"], record[-1]["head"])  # the head re-fits
    valid_set = PreparedDataset(tiny_data, "valid", exp.task)
    train_set = PreparedDataset(tiny_data, "train", exp.task)
    indices = validation_indices(exp.train, len(valid_set))
    refit_validations = 3  # after steps 6, 9 and 10 (the last)
    if cached:  # one pass over the training split and one over the validation clips, whatever the steps
        assert sum(seen) == len(train_set) + len(indices)
    else:  # each of the 6 re-fit steps forwards 5 clips, each validation the validation clips
        assert seen.count(5) == 6 and sum(seen) == 6 * 5 + refit_validations * len(indices)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.phase) == ["masks", "refit", "refit", "refit"]
    _, ttype = task_type(valid_set, exp.name)
    masked = record.learner.eval().model  # the cached embeddings score as the masked model does
    rescored = ttype.score(predict(masked, valid_set, 32, indices), valid_set, indices)[ttype.primary]
    assert rescored == pytest.approx(history.val_metric.iloc[-1])


def test_refit_options_need_a_refit():
    with pytest.raises(ValueError, match="set recipe.refit > 0"):
        Recipe(refit_cache=True)
    with pytest.raises(ValueError, match="set recipe.refit or recipe.ramp_refit > 0"):
        Recipe(refit_batch_size=64)
    Recipe(ramp_refit=10, refit_batch_size=64)  # sizes the ramp's re-fit
    raw = tiny_params()
    raw["experiments"]["tiny_kwyn"]["recipe"] = {"ramp_refit": 10}  # tiny_kwyn's sparsity has no ratio
    with pytest.raises(ParamsError, match="ramp_refit .* set sparsity.ratio"):
        validate(raw)


def test_ramp_refit_fits_the_head_once_where_the_ramp_ends_and_leaves_the_masks_alone(tmp_path, tiny_data,
                                                                                       monkeypatch):
    # 8 mask steps, the ramp reaches the target after step 4
    torch.manual_seed(0)  # the same initial head for both runs
    plain = _fit_recording(tiny_kwyn({"distill": 0.0}, steps=8, eval_every=4), tiny_data, tmp_path / "plain")
    seen = _count_refit_encoder_clips(monkeypatch)
    exp = tiny_kwyn({"ramp_refit": 20, "refit_batch_size": 5}, steps=8, eval_every=4)
    torch.manual_seed(0)
    record = _fit_recording(exp, tiny_data, tmp_path / "ramp")
    train_set = PreparedDataset(tiny_data, "train", exp.task)
    assert sum(seen) == len(train_set)  # one pass of the trimmed encoder over the training split, once
    for before in range(4):  # up to the ramp's end the two runs are one run
        assert torch.equal(record[before]["logits"], plain[before]["logits"])
        assert torch.equal(record[before]["head"], plain[before]["head"]) or before == 3
    assert not torch.equal(record[3]["head"], plain[3]["head"])  # at its end, 20 head steps more
    assert not torch.equal(record[-1]["logits"], record[3]["logits"])  # then the masks train on
    history = pd.read_csv(tmp_path / "ramp" / "history.csv")
    assert list(history.step) == [4, 8] and (history.phase == "masks").all()
    assert history.trim_ratio.iloc[0] == pytest.approx(0.5, abs=0.05)


def test_a_run_resumed_after_the_ramp_refit_does_not_refit_again(tmp_path, tiny_data, monkeypatch):
    exp = tiny_kwyn({"ramp_refit": 6}, steps=8, eval_every=4, checkpoint_every=4)
    train(exp, tiny_data, tmp_path / "straight", progress=False)
    train_killed_after(6, exp, tiny_data, tmp_path / "interrupted")
    seen = _count_refit_encoder_clips(monkeypatch)
    train(exp, tiny_data, tmp_path / "interrupted", progress=False)
    assert seen == []  # the checkpoint at step 4 holds the re-fitted head
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / d / "history.csv") for d in ("straight", "interrupted")))


def test_a_refit_on_the_ramp_refits_units_reuses_its_embeddings_and_changes_nothing(tmp_path, tiny_data, monkeypatch):
    """The ramp ends at the last mask step: the re-fit's units are the ramp re-fit's, embedded once for both."""
    exp = tiny_kwyn({"ramp_refit": 6, "refit": 6, "refit_cache": True, "refit_batch_size": 5}, ramp=1.0, steps=4,
                    eval_every=3)
    n_train = len(PreparedDataset(tiny_data, "train", exp.task))
    n_valid = len(validation_indices(exp.train, len(PreparedDataset(tiny_data, "valid", exp.task))))
    seen = _count_refit_encoder_clips(monkeypatch)
    torch.manual_seed(0)
    reused = _fit_recording(exp, tiny_data, tmp_path / "reused")
    assert sum(seen) == n_train + n_valid  # the training split once, for both re-fits; the validation clips once
    seen.clear()
    monkeypatch.setattr(loop, "_same_units", lambda a, b: False)  # as if the masks had moved: embedded again
    torch.manual_seed(0)
    again = _fit_recording(exp, tiny_data, tmp_path / "again")
    assert sum(seen) == 2 * n_train + n_valid
    assert torch.equal(reused[-1]["head"], again[-1]["head"]) and len(reused) == len(again) == 10
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / d / "history.csv") for d in ("reused", "again")))


def test_standardized_keeps_the_heads_function_and_folds_back_to_a_head_reading_raw_embeddings():
    torch.manual_seed(0)
    embeddings = 0.5 + 0.05 * torch.randn(200, 6)  # offsets ten times the spread, as a trimmed Whisper's
    embeddings[:, 3] = 0.7  # a dimension with no spread: left unscaled
    standardized = Standardized.of(embeddings)
    assert standardized.scale[3] == 1 and torch.allclose(standardized.features(embeddings).mean(0), torch.zeros(6),
                                                         atol=1e-5)
    head = MLPHead(6, 3, hidden=8)
    before = head(embeddings).detach()
    standardized.enter(head)
    assert torch.allclose(head(standardized.features(embeddings)), before, atol=1e-5)
    with torch.no_grad():  # a re-fit step moves the head in the new coordinates
        head[0].weight.add_(0.1 * torch.randn_like(head[0].weight))
    refitted = head(standardized.features(embeddings)).detach()
    raw = MLPHead(6, 3, hidden=8)
    raw.load_state_dict(standardized.raw_state(head))
    assert torch.allclose(raw(embeddings), refitted, atol=1e-5)
    assert not torch.allclose(raw(embeddings), before, atol=1e-3)


def test_a_head_fit_on_offset_embeddings_converges_further_standardised():
    """What refit_standardize claims: the same Adam steps fit a head far better in standardised coordinates."""
    torch.manual_seed(0)
    labels = torch.randint(3, (300,))
    embeddings = 0.5 + 0.05 * torch.randn(300, 8)  # offsets ten times the spread
    embeddings[:, :3] += 0.2 * torch.nn.functional.one_hot(labels, 3)  # the class, small against the offsets
    losses = {}
    for standardize in (False, True):
        torch.manual_seed(1)
        head = MLPHead(8, 3, hidden=16)
        standardized = Standardized.of(embeddings)
        if standardize:
            standardized.enter(head)
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
        for _ in range(200):
            features = standardized.features(embeddings) if standardize else embeddings
            loss = torch.nn.functional.cross_entropy(head(features), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if standardize:  # judged as saved: folded back, on the raw embeddings
            head.load_state_dict(standardized.raw_state(head))
        losses[standardize] = torch.nn.functional.cross_entropy(head(embeddings), labels).item()
    assert losses[True] < 0.5 * losses[False]


def test_refit_standardize_needs_cached_refits():
    with pytest.raises(ValueError, match="refit_standardize .* with recipe.refit_cache: true"):
        Recipe(refit=10, refit_standardize=True)  # an uncached re-fit: no training split's statistics
    with pytest.raises(ValueError, match="refit_standardize"):
        Recipe(refit_standardize=True)  # no re-fit at all
    Recipe(ramp_refit=10, refit_standardize=True)  # the ramp re-fit is always cached


def test_refit_standardize_in_the_ramp_refit_changes_it_only_and_hands_back_a_raw_head(tmp_path, tiny_data):
    records = {}
    for standardize in (False, True):
        exp = tiny_kwyn({"ramp_refit": 20, "refit_batch_size": 5, "refit_standardize": standardize}, steps=8,
                        eval_every=4)
        torch.manual_seed(0)
        records[standardize] = _fit_recording(exp, tiny_data, tmp_path / str(standardize))
    plain, record = records[False], records[True]
    for before in range(3):
        assert torch.equal(record[before]["head"], plain[before]["head"])
    assert not torch.equal(record[3]["head"], plain[3]["head"])
    # the masks train on under the re-fitted head reading raw embeddings: the saved head scores as validated
    model, _, best = load_trained(exp, tmp_path / "True")
    assert _validation_score(model, exp, tiny_data) == pytest.approx(best["row"]["val_metric"])


def _validation_score(model, exp, data) -> float:
    """The primary metric of `model` on the validation clips a run of `exp` scores."""
    valid_set = PreparedDataset(data, "valid", exp.task)
    _, ttype = task_type(valid_set, exp.name)
    indices = validation_indices(exp.train, len(valid_set))
    return ttype.score(predict(model, valid_set, 32, indices), valid_set, indices)[ttype.primary]


STANDARDIZED = {"refit": 6, "refit_cache": True, "refit_batch_size": 5, "refit_standardize": True}


def test_refit_standardize_changes_the_refit_only_and_saves_a_head_that_scores_as_validated(tmp_path, tiny_data):
    runs = {}
    for name, standardize in (("plain", False), ("standardized", True)):
        exp = tiny_kwyn({**STANDARDIZED, "refit_standardize": standardize}, ramp=1.0, steps=4, eval_every=3)
        torch.manual_seed(0)
        runs[name] = (_fit_recording(exp, tiny_data, tmp_path / name), exp)
    (plain, _), (record, exp) = runs["plain"], runs["standardized"]
    for step in range(4):  # the mask training is the same run
        assert torch.equal(record[step]["logits"], plain[step]["logits"])
        assert torch.equal(record[step]["head"], plain[step]["head"])
    assert not torch.equal(record[-1]["head"], plain[-1]["head"])  # the re-fit is not
    histories = {name: pd.read_csv(tmp_path / name / "history.csv") for name in runs}
    assert histories["plain"].val_metric.iloc[0] == histories["standardized"].val_metric.iloc[0]
    # what is saved reads the raw embedding and scores as its validation did, masked and in memory
    model, _, best = load_trained(exp, tmp_path / "standardized")
    assert _validation_score(model, exp, tiny_data) == pytest.approx(best["row"]["val_metric"])
    last = _validation_score(record.learner.eval().model, exp, tiny_data)
    assert last == pytest.approx(histories["standardized"].val_metric.iloc[-1])


def test_a_run_resumed_in_a_standardised_refit_matches_the_uninterrupted_one(tmp_path, tiny_data):
    exp = tiny_kwyn(STANDARDIZED, ramp=1.0, steps=4, eval_every=3, checkpoint_every=3)
    train(exp, tiny_data, tmp_path / "straight", progress=False)
    train_killed_after(8, exp, tiny_data, tmp_path / "interrupted")  # killed in the re-fit, resumed from step 6
    train(exp, tiny_data, tmp_path / "interrupted", progress=False)
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / d / "history.csv") for d in ("straight", "interrupted")))
    heads = [torch.load(tmp_path / d / "best.pt", weights_only=False)["head"] for d in ("straight", "interrupted")]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_distillation_pulls_the_masked_embedding_towards_the_full_one(tmp_path, tiny_data):
    """Same seed, same ratio; the distilled run's kept units reproduce the full encoder's embedding better.
    (Without the sparsity loss, whose pull on every logit would blur the comparison on so small a model.)"""
    errors = {}
    for weight in (0.0, 100.0):
        exp = tiny_kwyn({"distill": weight}, lambda_=0.0, steps=30, eval_every=10, lr=1e-4)
        train(exp, tiny_data, tmp_path / str(weight), progress=False)
        model, masks, best = load_trained(exp, tmp_path / str(weight))
        valid_set = PreparedDataset(tiny_data, "valid", exp.task)
        audio = torch.stack([valid_set[i][0] for i in range(len(valid_set))])
        with torch.no_grad():
            student = model.features(audio)
            with masks.disabled():
                teacher = model.features(audio)
        errors[weight] = float(distillation_loss(student, teacher))
        history = pd.read_csv(tmp_path / str(weight) / "history.csv")
        assert history.distill_loss.notna().all() == (weight > 0)
    assert errors[100.0] < 0.5 * errors[0.0]


def test_unit_costs_are_the_parameters_one_unit_of_each_site_takes_away(tiny_data):
    learner, _ = _learner(tiny_kwyn(), tiny_data)
    backbone, masks = learner.model.backbone, learner.modulations
    costs = unit_costs(backbone.trimmed_param_counter(), masks).split([m.logits.numel() for m in masks.values()])
    full = {name: torch.arange(mask.logits.numel()) for name, mask in masks.by_site().items()}
    for (name, mask), cost in zip(masks.by_site().items(), costs):
        one_short = {**full, name: torch.arange(mask.logits.numel() - 1)}
        expected = backbone.param_count() - backbone.trimmed_param_count(one_short)
        assert expected > 0 and (cost == expected).all()


def test_importance_logits_rank_units_by_importance_per_parameter():
    importance = torch.tensor([1.0, 4.0, 4.0, 0.0])
    costs = torch.tensor([1.0, 1.0, 4.0, 1.0])  # per parameter: 1, 4, 1, 0 (the last: clamped, lowest)
    logits = importance_logits(importance, costs, mask_init=1.0)
    assert logits[1] > logits[0] == logits[2] > logits[3]
    assert logits.mean() == pytest.approx(1.0) and logits.std() == pytest.approx(1.0)


def test_gradient_importance_is_the_squared_logit_gradient_summed_over_batches(tiny_data):
    exp = tiny_kwyn()
    learner, train_set = _learner(exp, tiny_data)
    masks = learner.modulations
    _, ttype = task_type(train_set, exp.name)
    batches = [ttype.collate(train_set, ids) for ids in ([0, 1, 2], [3, 4, 5])]
    expected = 0
    for audio, lengths, targets in batches:
        grads = torch.autograd.grad(ttype.loss(learner(audio, lengths), targets), masks.logits())
        expected = expected + torch.cat(grads) ** 2
    before = torch.cat([m.logits.detach().clone() for m in masks.values()])
    got = gradient_importance(learner, masks, batches, ttype.loss)
    torch.testing.assert_close(got, expected)
    assert torch.equal(before, torch.cat([m.logits.detach() for m in masks.values()]))
    assert all(m.logits.grad is None for m in masks.values())


def test_importance_init_starts_the_masks_from_the_importance_ranking(tmp_path, tiny_data):
    exp = tiny_kwyn({"head_warmup": 2, "init": "importance", "init_batches": 2}, steps=6, eval_every=4)
    record = _fit_recording(exp, tiny_data, tmp_path)
    assert torch.allclose(record[1]["logits"], record[0]["logits"])  # warm-up: logits as constructed
    moved = record[2]["logits"]  # after the first mask step, which starts from the importance logits
    assert moved.std() > 0.5  # the constant start (plus ratio control's 1e-3 jitter) has std ~3e-4
    with pytest.raises(ParamsError, match="only ratio control"):
        raw = tiny_params()
        raw["experiments"]["tiny_kwyn"]["recipe"] = {"init": "importance"}
        validate(raw)


# -- distillation frame by frame (recipe.distill_frames) ---------------------------------------------------------

@pytest.fixture(scope="module")
def frame_data(tmp_path_factory):
    """The tiny notes at 0.2 s: CREPE-tiny gives several frames per clip (one at the default 0.064 s)."""
    from conftest import tiny_notes

    return tiny_notes(tmp_path_factory.mktemp("notes_frames"), clip_seconds=0.2)


def test_a_frame_teacher_caches_the_full_encoders_frames_and_pools_them_as_embed(frame_data):
    exp = tiny_kwyn()
    learner, train_set = _learner(exp, frame_data)
    masks = learner.modulations
    with torch.no_grad():
        for mask in masks.values():
            mask.logits[: mask.logits.numel() // 2] = -1.0
    frames = EmbeddingCache(learner.model, masks, train_set, batch_size=3, frames=True)
    pooled = EmbeddingCache(learner.model, masks, train_set, batch_size=3)
    cached = frames([2, 0])
    assert cached.dim() == 3 and cached.shape[1] > 1  # (clips, frames, dim)
    full = frozen_backbone(exp)
    audio = torch.stack([train_set[i][0] for i in (2, 0)])
    with torch.no_grad():
        torch.testing.assert_close(cached, full.sequence(audio)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frames.pooled([2, 0]), full.embed(audio), rtol=1e-5, atol=1e-6)
    assert torch.equal(pooled.pooled([2, 0]), pooled([2, 0]))  # a pooled cache is what the head reads already
    # the student's frames, whose time average is the head's input
    outputs, student = learner(audio, return_frames=True)
    torch.testing.assert_close(student.mean(dim=1), learner.model.features(audio), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs, learner(audio), rtol=1e-5, atol=1e-6)


def test_distill_frames_distils_the_frames_and_needs_a_distillation_and_a_frame_sequence(tmp_path, frame_data,
                                                                                         monkeypatch):
    with pytest.raises(ValueError, match="set recipe.distill > 0"):
        Recipe(distill_frames=True)
    seen = []
    real = loop.distillation_loss
    monkeypatch.setattr(loop, "distillation_loss", lambda s, t: seen.append((s.shape, t.shape)) or real(s, t))
    for frames in (False, True):
        seen.clear()
        train(tiny_kwyn({"distill": 1.0, "distill_frames": frames}, steps=3), frame_data, tmp_path / str(frames),
              progress=False)
        student, teacher = seen[0]
        assert student == teacher and len(student) == (3 if frames else 2)  # (batch, frames, dim) or (batch, dim)
    from test_cnn14 import tiny_model  # CNN14 pools time away inside the encoder

    cnn = tiny_model()
    with pytest.raises(ValueError, match="distill_frames needs a backbone with a frame sequence"):
        EmbeddingCache(task_model(cnn, torch.nn.Linear(cnn.embedding_dim, 2)), None, [], frames=True)


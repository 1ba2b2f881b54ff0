"""lottery: structured lottery tickets (Esling et al. 2020; kwyn.lottery). Round 0 fine-tunes the whole encoder and
the head; every later round scores the units still present, removes the lowest-scored `share` of them, rewinds encoder
and head to step `rewind_step` of round 0 and retrains. Each round is a resumable run in <run_dir>/round<r>, and a
model of its own in the report (the curve of metric vs ratio)."""
from __future__ import annotations

from kwyn.methods.method import Method, RunContext


class Lottery(Method):
    name = "lottery"
    label = "lottery (rounds)"
    style = dict(marker="^", ls="-", color="C2")
    modulations = "kwyn.lottery:FixedMaskSet"
    blocks = ("lottery",)
    removes_units = selectable = True
    in_rounds = True  # trimmed and evaluated round by round (kwyn.runs.round_dirs)
    table1_best = "lottery_best"

    def check(self, exp) -> None:
        if exp.lottery is None:
            from kwyn.params import Lottery as Block

            exp.lottery = Block()

    def trains_encoder(self, exp) -> bool:
        return True

    def setting(self, result: dict) -> str:
        return f"lottery r{result['round']}"

    def run(self, ctx: RunContext) -> dict:
        import torch

        from kwyn.io import atomic_path
        from kwyn.lottery import FixedMaskSet
        from kwyn.lottery import prune_round, unit_scores
        from kwyn.loop import Learner, fit, to_device
        from kwyn.metrics import task_type
        from kwyn.model import task_model
        from kwyn.runs import build_encoder, copy_selected

        exp, runtime, run_dir = ctx.exp, ctx.runtime, ctx.run_dir
        cfg, steps = exp.lottery, exp.lottery.steps or exp.train.steps
        if cfg.rewind_step > steps:
            raise ValueError(f"{exp.name}: lottery.rewind_step {cfg.rewind_step} is after the last step ({steps})")
        architecture = {"init": "pretrained"}
        backbone = build_encoder(exp, architecture)
        _, ttype = task_type(ctx.train_set, exp.name)
        torch.manual_seed(exp.train.seed)
        head = ttype.make_head(backbone.embedding_dim, ctx.train_set)
        masks = FixedMaskSet(backbone.mask_sites())
        learner = Learner(task_model(backbone, head), masks, train_encoder=True)
        rewind_path = run_dir / "round0" / "rewind.pt"

        def save_rewind(done: int) -> None:
            """Encoder and head at `rewind_step` of round 0: what every later round starts from."""
            if done == cfg.rewind_step and runtime.is_main and not rewind_path.exists():
                rewind_path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(rewind_path) as tmp:
                    torch.save({"encoder": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
                                "head": {k: v.detach().cpu() for k, v in head.state_dict().items()}}, tmp)

        scoring = torch.Generator().manual_seed(exp.train.seed + 2)
        summaries = []
        for r in range(cfg.rounds + 1):
            if r > 0:
                batches = [ttype.collate(ctx.train_set, torch.randint(len(ctx.train_set), (exp.train.batch_size,),
                                                                      generator=scoring).tolist())
                           for _ in range(cfg.score_batches)]
                batches = [(audio.to(runtime.device), to_device(targets, runtime.device))
                           for audio, _, targets in batches]
                learner.eval()
                scores = unit_scores(cfg.score, learner.model, batches=[b if cfg.score == "gradient" else b[0]
                                                                        for b in batches],
                                     loss_fn=lambda model, batch: ttype.loss(model(batch[0]), batch[1]))
                masks.set_kept(prune_round(scores, masks.kept_units(), cfg.share, sites=backbone.mask_sites(),
                                           multiple_of=cfg.multiple_of))
                rewind = torch.load(rewind_path, map_location="cpu", weights_only=False)
                backbone.load_state_dict(rewind["encoder"])
                head.load_state_dict(rewind["head"])
            elif cfg.rewind_step == 0:
                save_rewind(0)
            kept = {k: v.tolist() for k, v in masks.kept_units().items()}

            def on_step(done: int, r=r) -> None:
                if r == 0:
                    save_rewind(done)
                if ctx.on_step is not None:
                    ctx.on_step(done)

            summaries.append(fit(exp, learner, ctx.train_set, ctx.valid_set, run_dir / f"round{r}",
                                 architecture=architecture, steps=steps, runtime=runtime, progress=ctx.progress,
                                 extra={"round": r, "kept": kept}, on_step=on_step,
                                 live_dir=ctx.live_dir))  # the round in training: each round rewrites it
        if runtime.is_main:
            copy_selected(run_dir / f"round{cfg.rounds}", run_dir)
        return {**summaries[-1], "rounds": summaries}

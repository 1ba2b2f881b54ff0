"""hardconcrete: DPHuBERT's unit masks on the paper's sites. HardConcrete gates per unit and the head, on the frozen
encoder, with a learned Lagrangian driving the expected share of parameters removed to `hardconcrete.ratio`
(kwyn.hardconcrete). The strongest peer's mask family beside the paper's straight-through masks, same budget."""
from __future__ import annotations

from kwyn.methods.method import Method, RunContext


class HardConcrete(Method):
    name = "hardconcrete"
    label = "HardConcrete + Lagrangian (DPHuBERT's masks)"
    style = dict(marker="X", ls="-.", color="C6")
    modulations = "kwyn.hardconcrete:HardConcreteSet"
    blocks = ("hardconcrete",)
    ratio_block = "hardconcrete"
    removes_units = selectable = True  # its gates learn at hardconcrete.lr, not train.mask_lr
    table1_prefix, table1_best = "hardconcrete", "hardconcrete_best"

    def check(self, exp) -> None:
        if exp.hardconcrete is None:
            raise ValueError("method 'hardconcrete' needs a 'hardconcrete' block with the target `ratio`")

    def run(self, ctx: RunContext) -> dict:
        import torch

        from kwyn.hardconcrete import HardConcreteSet
        from kwyn.loop import Learner, fit
        from kwyn.metrics import task_type
        from kwyn.model import task_model
        from kwyn.runs import build_encoder

        exp, cfg = ctx.exp, ctx.exp.hardconcrete
        architecture = {"init": "pretrained"}
        torch.manual_seed(exp.train.seed)
        backbone = build_encoder(exp, architecture)
        _, ttype = task_type(ctx.train_set, exp.name)
        head = ttype.make_head(backbone.embedding_dim, ctx.train_set)
        gates = HardConcreteSet(backbone.mask_sites(), cfg.init_drop, cfg.beta)
        gates.constrain(backbone.trimmed_param_counter(), backbone.param_count(), cfg.ratio,
                        round(cfg.ratio_ramp * exp.train.steps), cfg.lr)
        learner = Learner(task_model(backbone, head), gates, train_encoder=False)
        return fit(exp, learner, ctx.train_set, ctx.valid_set, ctx.run_dir, architecture=architecture,
                   steps=exp.train.steps, runtime=ctx.runtime, progress=ctx.progress, on_step=ctx.on_step)

    def setting(self, result: dict) -> str:
        target = result.get("target_ratio")
        return "hardconcrete" + (f" target {100 * target:g}%" if target is not None else "")

"""hardconcrete: DPHuBERT's unit masks on the paper's sites. HardConcrete gates per unit and the head, on the frozen
encoder, with a learned Lagrangian driving the expected share of parameters removed to `hardconcrete.ratio`
(kwyn.hardconcrete). The strongest peer's mask family beside the paper's straight-through masks, same budget."""
from __future__ import annotations

from kwyn.methods.method import Method


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

    def make_modulations(self, backbone, exp):
        """Its gates, with the Lagrangian holding their expected size at hardconcrete.ratio."""
        from kwyn.hardconcrete import HardConcreteSet

        cfg = exp.hardconcrete
        gates = HardConcreteSet(backbone.mask_sites(), cfg.init_drop, cfg.beta, cfg.multiple_of)
        gates.constrain(backbone.trimmed_param_counter(), backbone.param_count(), cfg.ratio,
                        round(cfg.ratio_ramp * exp.train.steps), cfg.lr)
        return gates

    def setting(self, result: dict) -> str:
        target = result.get("target_ratio")
        return "hardconcrete" + (f" target {100 * target:g}%" if target is not None else "")

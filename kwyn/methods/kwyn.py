"""kwyn: the paper's method. A learned binary mask per unit (straight-through estimator) and the head, on the
frozen encoder, with the paper's sparsity loss, or ratio control landing on a requested ratio (kwyn.masks);
optionally the convergence recipe of kwyn.recipe (head warm-up, distillation, re-fit)."""
from __future__ import annotations

from kwyn.methods.method import Method


class Kwyn(Method):
    name = "kwyn"
    label = "kwyn (masks, then trimmed)"
    style = dict(marker="o", ls="-", color="C0")
    modulations = "kwyn.masks:MaskSet"
    blocks = ("sparsity", "recipe")
    ratio_block = "sparsity"
    removes_units = selectable = learns_masks = True
    table2_name = "trim"
    table1_prefix, table1_best = "ours", "best"

    def check(self, exp) -> None:
        if exp.sparsity is None:
            raise ValueError("method 'kwyn' needs a 'sparsity' block (loss, t, lambda, and optionally ratio)")
        if exp.recipe is not None and exp.recipe.init == "importance" and exp.sparsity.ratio is None:
            raise ValueError("recipe.init 'importance' starts some logits below 0, which only ratio control "
                             "(sparsity.ratio) keeps on until the ramp removes them: set sparsity.ratio")
        if exp.recipe is not None and exp.recipe.ramp_refit and exp.sparsity.ratio is None:
            raise ValueError("recipe.ramp_refit re-fits the head where the ratio ramp ends, which only ratio control "
                             "(sparsity.ratio) has: set sparsity.ratio")

    def setting(self, result: dict) -> str:
        from kwyn.report import recipe_text

        target = result.get("target_ratio")
        recipe = recipe_text(result)
        return (f"kwyn {result.get('sparsity_loss')} t={result.get('t', float('nan')):g} "
                f"λ={result.get('lambda', float('nan')):g}" + (f" + {recipe}" if recipe else "")
                + (f" target {100 * target:g}%" if target is not None else ""))

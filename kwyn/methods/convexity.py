"""convexity: the encoder's layers after the most class-convex one dropped, then the head (and optionally the kept
layers) trained (Dorszewski et al. 2024; kwyn.convexity). Needs transformer layers and a classification task."""
from __future__ import annotations

from pathlib import Path

from kwyn.methods.method import Method, RunContext


class Convexity(Method):
    name = "convexity"
    label = "convexity (layers dropped)"
    style = dict(marker="D", ls="", color="C3")
    blocks = ("convexity",)
    removes_units = selectable = True
    table1_best = "convexity"

    def check(self, exp) -> None:
        if exp.convexity is None:
            from kwyn.params import Convexity as Block

            exp.convexity = Block()

    def skip_reason(self, backbone: str, task_type: str):
        from kwyn.backbones import BACKBONES, family_class
        from kwyn.backbones.base import Backbone

        if family_class(BACKBONES[backbone][0]).keep_layers is Backbone.keep_layers:
            return f"{backbone}: no transformer layers to drop (its family has no keep_layers)"
        if task_type != "classification":
            return f"a {task_type} task, not classification"
        return None

    def architecture(self, ctx: RunContext) -> dict:
        from kwyn.convexity import choose_layers
        from kwyn.runs import frozen_backbone

        return {"init": "pretrained", **choose_layers(ctx.exp, frozen_backbone(ctx.exp), ctx.train_set, ctx.run_dir,
                                                      progress=ctx.progress and ctx.runtime.is_main)}

    def trains_encoder(self, exp) -> bool:
        return exp.convexity.finetune

    def result(self, exp, run_dir: Path) -> dict:
        from kwyn.io import read_json

        return {"convexity": read_json(Path(run_dir) / "convexity.json")}

    def setting(self, result: dict) -> str:
        kept = (result.get("convexity") or {}).get("kept_layers")
        return f"convexity {kept} layers" if kept is not None else "convexity"

"""scratch: the architecture a kwyn experiment kept, re-initialised and trained whole (encoder unfrozen).
Declared in params.yaml's `scratch:` section (`from:` the kwyn experiment), not under `experiments:`."""
from __future__ import annotations

from pathlib import Path

from kwyn.methods.method import Method, RunContext


class Scratch(Method):
    name = "scratch"
    label = "scratch (trimmed architecture re-trained)"
    style = dict(marker="s", ls="", color="C1")
    removes_units = True
    table1_prefix = "scratch"
    in_experiments = False

    def architecture(self, ctx: RunContext) -> dict:
        if ctx.source_model_dir is None:
            raise ValueError(f"{ctx.exp.name}: method scratch needs the trimmed model of {ctx.exp.source}")
        return scratch_architecture(ctx.source_model_dir)

    def trains_encoder(self, exp) -> bool:
        return True

    def setting(self, result: dict) -> str:
        target = result.get("target_ratio")
        return "scratch" + (f" target {100 * target:g}%" if target is not None else f" {100 * result['trim_ratio']:.0f}%")

    def target_ratio(self, exp):
        return exp.sparsity.ratio if exp.sparsity else None  # the ratio of the kwyn run it re-trains


def scratch_architecture(source_model_dir: str | Path) -> dict:
    """Kept units and untrimmed config of the kwyn model a scratch run re-initialises."""
    from kwyn.io import read_json

    path = Path(source_model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: trim the scratch run's source experiment first")
    config = read_json(path)
    return {"init": "random", "base_config": config["backbone"], "kept_units": config["kept_units"]}

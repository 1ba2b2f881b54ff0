"""Print a backbone's mask sites as a markdown table: `python -m kwyn.inventory crepe-full [...]`.

Architectures are built with random weights (the inventory does not depend on them), so no
download is needed.
"""
from __future__ import annotations

import sys

import pandas as pd

from kwyn.backbones import BACKBONES, load_backbone


def inventory(name: str) -> pd.DataFrame:
    backbone = load_backbone(name, pretrained=False)
    table = pd.DataFrame(backbone.site_table())
    table.attrs["params"] = backbone.param_count()
    return table


def markdown(name: str) -> str:
    table = inventory(name)
    return (f"### {name}: {table.attrs['params'] / 1e6:.2f} M encoder parameters, {len(table)} mask sites, "
            f"{table.units.sum()} units\n\n{table.to_markdown(index=False)}\n")


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(BACKBONES)
    print("\n".join(markdown(name) for name in names))

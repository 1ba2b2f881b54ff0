"""ssf: a scale and a shift per unit at every mask site, trained with the head on the frozen encoder
(Lian et al. 2022; kwyn.ssf). Nothing is removed: the trimmed model keeps them and the full encoder's cost."""
from __future__ import annotations

from kwyn.methods.method import Method


class SSF(Method):
    name = "ssf"
    label = "SSF (nothing removed)"
    style = dict(marker="P", ls=":", color="C4")
    modulations = "kwyn.ssf:ScaleShiftSet"

"""The methods kwyn trains, one module each, behind one protocol (kwyn.methods.method.Method).

The registry's order is the report's order. Adding a method: a module here, a line below, its tests
(tests/test_methods.py runs every registered method for a step and checks that its trimming is exact).

    from kwyn.methods import METHODS, method_of
    METHODS["kwyn"].removes_units           # True
    method_of(exp).run(ctx)                 # what kwyn.train.train does
"""
from __future__ import annotations

from kwyn.methods.base import Base
from kwyn.methods.convexity import Convexity
from kwyn.methods.hardconcrete import HardConcrete
from kwyn.methods.kwyn import Kwyn
from kwyn.methods.lottery import Lottery
from kwyn.methods.method import BLOCKS, Method, RunContext, require_absent
from kwyn.methods.scratch import Scratch
from kwyn.methods.ssf import SSF

METHODS: dict[str, Method] = {m.name: m for m in (Base(), SSF(), Scratch(), Kwyn(), Lottery(), Convexity(),
                                                 HardConcrete())}


def modulation_set(kind: str) -> type:
    """The SiteModulationSet class of a `kind` that a run's best.pt records (kwyn.runs.load_trained)."""
    sets = {cls.kind: cls for cls in (m.modulation_set() for m in METHODS.values()) if cls is not None}
    if kind not in sets:
        raise KeyError(f"unknown modulation kind {kind!r}; known: {', '.join(sets)}")
    return sets[kind]


def method_of(exp) -> Method:
    """The method of an experiment (or of a result dict's "method")."""
    name = exp if isinstance(exp, str) else exp.method
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["BLOCKS", "METHODS", "modulation_set", "Method", "RunContext", "method_of", "require_absent"]

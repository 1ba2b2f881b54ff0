"""base: the frozen encoder and a small head trained on it (a linear-probe-like baseline; nothing removed)."""
from __future__ import annotations

from kwyn.methods.method import Method


class Base(Method):
    name = "base"
    label = "base (frozen encoder + head)"
    style = dict(marker="*", ls="--", color="grey")

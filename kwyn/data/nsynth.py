"""NSynth's on-disk layout: root/nsynth-<split>/examples.json + audio/<note_str>.wav.

Read the same way whether the files are the real NSynth or our soundfont rendering.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

NSYNTH_FAMILIES = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed",
                   "string", "synth_lead", "vocal"]
SPLITS = ("train", "valid", "test")


@dataclass
class Example:
    path: Path
    labels: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.path.stem


def read_nsynth_split(root, split: str) -> list[Example]:
    """Examples of one split, in examples.json order.

    Labels are names, ready to index into label sets: pitch and velocity as ints,
    instrument_family as the family name (e.g. "guitar"), instrument as instrument_str.
    """
    split_dir = Path(root) / f"nsynth-{split}"
    meta_path = split_dir / "examples.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"NSynth split {split!r}: {meta_path} not found")
    records = json.loads(meta_path.read_text())
    examples = [Example(split_dir / "audio" / f"{note_str}.wav", {
        "pitch": r["pitch"], "velocity": r["velocity"], "instrument_family": r["instrument_family_str"],
        "instrument": r["instrument_str"], "instrument_source": r["instrument_source_str"],
    }) for note_str, r in records.items()]
    missing = [str(e.path) for e in examples if not e.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} wav file(s) listed in {meta_path} are missing, e.g.:\n  "
                                + "\n  ".join(missing[:10]))
    return examples

"""An NSynth-like dataset rendered offline from the General MIDI soundfont that pretty_midi ships.

NSynth (Engel et al. 2017) is 4 s notes (3 s held, 1 s release) of many instruments at
MIDI pitches 9-120, labelled with pitch and instrument family, split BY INSTRUMENT so test
instruments are unseen. We keep that design, render with tinysoundfont (a wheel, no system
library, no download) and write NSynth's on-disk layout, so the same reader serves both.

GM program -> NSynth family (ranges inclusive; the GM group names are the standard ones):

    0-7    pianos, harpsichord, clavinet     keyboard
    8-15   chromatic percussion              mallet
    16-20  organs                            organ
    21-23  accordion, harmonica, bandoneon   reed     (free reeds: NSynth files accordions
                                                       under keyboard, but they sound reeds)
    24-31  guitars                           guitar
    32-39  basses                            bass
    40-45  violin .. pizzicato strings       string
    46     harp                              string
    47     timpani                           mallet   (pitched drum)
    48-51  string ensembles, synth strings   string
    52-54  choir aahs, voice oohs, synth vox vocal
    55     orchestra hit                     excluded (a chord stab, no single pitch)
    56-63  brass                             brass
    64-71  reeds (saxes, oboe, bassoon, ...) reed
    72-79  pipes (piccolo, flute, ...)       flute
    80-87  synth leads                       synth_lead
    88-95  synth pads                        synth_lead (NSynth has no pad family)
    96-103 synth effects                     synth_lead
    104-107 sitar, banjo, shamisen, koto     guitar   (plucked strings)
    108    kalimba                           mallet
    109    bagpipe                           reed
    110    fiddle                            string
    111    shanai                            reed
    112-119 percussive                       excluded (no stable pitch)
    120-127 sound effects                    excluded
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from kwyn.data.nsynth import NSYNTH_FAMILIES, SPLITS
from kwyn.io import atomic_path, tqdm

SILENT = 1e-4  # max abs below this: the preset does not sound at that pitch
HOLD_FRACTION = 0.75  # NSynth holds 3 s of a 4 s note

_RANGES = [
    (0, 7, "keyboard"), (8, 15, "mallet"), (16, 20, "organ"), (21, 23, "reed"), (24, 31, "guitar"),
    (32, 39, "bass"), (40, 46, "string"), (47, 47, "mallet"), (48, 51, "string"), (52, 54, "vocal"),
    (56, 63, "brass"), (64, 71, "reed"), (72, 79, "flute"), (80, 103, "synth_lead"),
    (104, 107, "guitar"), (108, 108, "mallet"), (109, 109, "reed"), (110, 110, "string"),
    (111, 111, "reed"),
]
GM_FAMILY = {p: fam for lo, hi, fam in _RANGES for p in range(lo, hi + 1)}  # program -> family


def default_soundfont() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def split_programs(programs: list[int], counts: tuple[int, int, int], rng: np.random.Generator) -> list[list[int]]:
    """Shuffle one family's programs and deal them out as (train, valid, test).

    A family too small for `counts` still gets one train program first, then valid and test
    get what is left, in that order; train takes the rest up to its count.
    """
    programs = [programs[i] for i in rng.permutation(len(programs))]
    n_train, n_valid, n_test = counts
    left = len(programs) - min(1, len(programs), n_train)
    n_valid = min(n_valid, left)
    n_test = min(n_test, left - n_valid)
    n_train = min(n_train, len(programs) - n_valid - n_test)
    return [programs[:n_train], programs[n_train:n_train + n_valid],
            programs[n_train + n_valid:n_train + n_valid + n_test]]


def render_note(synth, sfid: int, program: int, pitch: int, velocity: int, n_samples: int, n_hold: int) -> np.ndarray:
    """One note as mono float32: held for n_hold samples, then released until n_samples."""
    synth.program_select(0, sfid, 0, program)
    synth.noteon(0, pitch, velocity)
    held = np.frombuffer(synth.generate(n_hold), dtype=np.float32)
    synth.noteoff(0, pitch)
    tail = np.frombuffer(synth.generate(n_samples - n_hold), dtype=np.float32)
    synth.sounds_off()  # the next note must start from silence, whatever this one's release
    synth.generate(64)
    return np.concatenate([held, tail]).reshape(-1, 2).mean(axis=1)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    # our own rounding and clipping: libsndfile's float->int conversion wraps on overload
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def render_nsynth_like(out_dir, *, seed: int = 0, sample_rate: int = 16000, note_seconds: float = 1.0,
                       pitches: tuple[int, int] = (48, 84), velocities: tuple[int, ...] = (100,),
                       families: list[str] | None = None, split_per_family: tuple[int, int, int] = (6, 1, 1),
                       soundfont=None) -> dict:
    """Render out_dir/nsynth-{train,valid,test}/{examples.json,audio/<note_str>.wav}; return a summary.

    `pitches` is an inclusive MIDI range. Same arguments -> byte-identical files.
    """
    import tinysoundfont

    families = list(NSYNTH_FAMILIES if families is None else families)
    unknown = sorted(set(families) - set(NSYNTH_FAMILIES))
    if unknown:
        raise ValueError(f"unknown NSynth families {unknown}; known: {NSYNTH_FAMILIES}")
    soundfont = Path(soundfont or default_soundfont())
    if not soundfont.is_file():
        raise FileNotFoundError(f"soundfont not found: {soundfont}")

    split_of = {s: [] for s in SPLITS}  # split -> [(program, family)]
    for fam in families:
        progs = sorted(p for p, f in GM_FAMILY.items() if f == fam)
        # one generator per family, so choosing other families does not reshuffle this one
        rng = np.random.default_rng([seed, NSYNTH_FAMILIES.index(fam)])
        for split, chosen in zip(SPLITS, split_programs(progs, split_per_family, rng)):
            split_of[split] += [(p, fam) for p in sorted(chosen)]

    n_samples = round(note_seconds * sample_rate)
    n_hold = round(HOLD_FRACTION * n_samples)
    pitch_list = list(range(pitches[0], pitches[1] + 1))
    total = sum(len(v) for v in split_of.values()) * len(pitch_list) * len(velocities)
    summary = {"seed": seed, "sample_rate": sample_rate, "note_seconds": note_seconds,
               "soundfont": str(soundfont), "splits": {}}
    out_dir = Path(out_dir)
    note_id = 0
    with tqdm(total=total, desc="render", unit="note") as bar:
        for split in SPLITS:
            examples, silent = {}, []
            with atomic_path(out_dir / f"nsynth-{split}") as tmp:
                (tmp / "audio").mkdir(parents=True)
                for program, fam in split_of[split]:
                    synth = tinysoundfont.Synth(samplerate=sample_rate)
                    sfid = synth.sfload(str(soundfont))
                    instrument_str = f"{fam}_synthetic_{program:03d}"
                    for pitch in pitch_list:
                        for velocity in velocities:
                            bar.update()
                            note_str = f"{instrument_str}-{pitch:03d}-{velocity:03d}"
                            x = render_note(synth, sfid, program, pitch, velocity, n_samples, n_hold)
                            if not np.abs(x).max() >= SILENT:  # also catches NaN
                                silent.append(note_str)
                                continue
                            sf.write(tmp / "audio" / f"{note_str}.wav", to_pcm16(x), sample_rate,
                                     subtype="PCM_16", format="WAV")
                            examples[note_str] = {
                                "note": note_id, "note_str": note_str, "pitch": pitch, "velocity": velocity,
                                "instrument_family": NSYNTH_FAMILIES.index(fam), "instrument_family_str": fam,
                                "instrument_source": 0, "instrument_source_str": "synthetic",
                                "instrument": program, "instrument_str": instrument_str,
                                "sample_rate": sample_rate, "qualities": [0] * 10, "qualities_str": [],
                            }
                            note_id += 1
                (tmp / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")
            summary["splits"][split] = {"notes": len(examples), "silent_skipped": len(silent),
                                        "programs": len(split_of[split]),
                                        "program_ids": [p for p, _ in split_of[split]]}
    return summary

"""A Speech Commands-like keyword dataset synthesised offline with espeak-ng (kwyn.speech).

Speech Commands v2 (Warden 2018) is 1 s clips of one spoken word each, split BY SPEAKER so
test speakers are unseen. We keep that design with espeak-ng voices as the speakers (an accent
plus a voice variant), each word spoken at several rates and pitches, centred in the clip,
with white noise added. The files use the real on-disk layout, so the same reader serves both:

    root/<word>/<voiceid>_nohash_<n>.wav     16-bit PCM mono
    root/validation_list.txt                 "<word>/<file>.wav" lines: the valid split
    root/testing_list.txt                    the same for the test split; train = every other clip
    root/kwyn_render.json                    how it was rendered (not part of Speech Commands)

<voiceid> is the espeak voice name made file-safe ("en-us+f3" -> "en-us-f3");
<n> numbers the (rate, pitch) combinations of that voice and word.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from kwyn.data.nsynth import SPLITS, Example
from kwyn.data.soundfont import to_pcm16
from kwyn.io import atomic_path

CORE_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# English accents x espeak voice variants (espeak-ng-data/voices/!v), half male, half female
DEFAULT_VOICES = ("en-us", "en-us+f3", "en+m3", "en+f2", "en-gb-x-rp+m2", "en-gb-x-rp+f4", "en-gb-scotland+m4",
                  "en-gb-scotland+f1", "en-029+m7", "en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m1", "en-us-nyc+f2")
LIST_FILES = {"valid": "validation_list.txt", "test": "testing_list.txt"}
ESPEAK_RATE = 22050  # espeak-ng's own output rate: we resample ourselves (see _speak)
PEAK = 0.5  # speech is scaled to this peak, so voices differ in timbre, not loudness
TRIM = 0.01  # leading/trailing samples below this share of the peak are silence


def voice_id(voice: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", voice.lower()).strip("-")


def _check_voices(voices) -> None:
    import espeakng_loader

    from kwyn.speech import list_voices

    # espeak silently ignores an unknown "+variant", so check the variant file ourselves
    variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    languages = {lang for v in list_voices() for lang in v["languages"]}
    for voice in voices:
        base, _, variant = voice.partition("+")
        if base.lower() not in languages:
            raise ValueError(f"espeak-ng has no language {base!r} (voice {voice!r})")
        if variant and not (variants / variant).is_file():
            raise ValueError(f"espeak-ng has no voice variant {variant!r} (voice {voice!r}); see {variants}")
    ids = [voice_id(v) for v in voices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"voices must have distinct file-safe ids, got {ids}")


def split_voices(voices, counts, seed: int) -> dict[str, list[str]]:
    """Shuffle the voices with the seed and deal them out as train, valid, test."""
    if sum(counts) != len(voices) or min(counts) < 1:
        raise ValueError(f"split_per_voice {tuple(counts)} must be >= 1 each and sum to the {len(voices)} voices")
    order = [voices[i] for i in np.random.default_rng(seed).permutation(len(voices))]
    bounds = np.cumsum([0, *counts])
    return {s: sorted(order[bounds[i]:bounds[i + 1]]) for i, s in enumerate(SPLITS)}


def _speak(word: str, voice: str, rate: int, pitch: int, sample_rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    from kwyn.speech import synthesize

    x = synthesize(word, voice=voice, rate_wpm=rate, pitch=pitch, sample_rate=ESPEAK_RATE).astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > TRIM * np.abs(x).max())
    x = x[loud[0]:loud[-1] + 1]  # espeak pads with silence: trim it, so centring centres the word
    if sample_rate != ESPEAK_RATE:
        # a polyphase filter in numpy: fast, and the same samples whatever the thread count
        g = np.gcd(sample_rate, ESPEAK_RATE)
        x = resample_poly(x, sample_rate // g, ESPEAK_RATE // g)
    return x * (PEAK / np.abs(x).max())


def _clip(speech: np.ndarray, n_samples: int, noise_db: float, rng: np.random.Generator) -> np.ndarray:
    """The word centred in n_samples (cropped around its middle if longer), plus white noise."""
    rms = np.sqrt(np.mean(speech ** 2))
    if len(speech) > n_samples:
        start = (len(speech) - n_samples) // 2
        speech = speech[start:start + n_samples]
    out = np.zeros(n_samples)
    start = (n_samples - len(speech)) // 2
    out[start:start + len(speech)] = speech
    return out + rng.standard_normal(n_samples) * rms * 10 ** (noise_db / 20)


def render_spoken_commands(out_dir, *, seed: int = 0, words=CORE_WORDS, voices=None, rates=(140, 170, 200),
                           pitches=(35, 50, 65), noise_db=(-30, -20), sample_rate: int = 16000,
                           clip_seconds: float = 1.0, split_per_voice=None) -> dict:
    """Render every word x voice x rate x pitch into out_dir (layout in the module docstring); return a summary.

    noise_db: each clip gets white noise at one of these levels (dB relative to the speech RMS),
    drawn per clip. split_per_voice: voices per (train, valid, test); default about 4:1:1.
    Same arguments -> byte-identical files.
    """
    voices = list(DEFAULT_VOICES if voices is None else voices)
    words = list(words)
    if len(set(words)) != len(words) or not all(re.fullmatch(r"[a-z]+", w) for w in words):
        raise ValueError(f"words must be distinct lowercase words, got {words}")
    _check_voices(voices)
    if split_per_voice is None:
        n_held = max(1, round(len(voices) / 6))
        split_per_voice = (len(voices) - 2 * n_held, n_held, n_held)
    split_of = split_voices(voices, split_per_voice, seed)
    n_samples = round(clip_seconds * sample_rate)
    combos = [(r, p) for r in rates for p in pitches]

    lists = {s: [] for s in SPLITS}
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp, tqdm(total=len(words) * len(voices) * len(combos), desc="speak",
                                           unit="clip") as bar:
        for word in words:
            (tmp / word).mkdir(parents=True)
        for split in SPLITS:
            for voice in split_of[split]:
                for word in words:
                    for n, (rate, pitch) in enumerate(combos):
                        bar.update()
                        # a generator per clip, keyed by its content: other words/voices do not shift its noise
                        key = zlib.crc32(f"{voice}|{word}|{rate}|{pitch}".encode())
                        rng = np.random.default_rng([seed, key])
                        level = noise_db[rng.integers(len(noise_db))]
                        x = _clip(_speak(word, voice, rate, pitch, sample_rate), n_samples, level, rng)
                        rel = f"{word}/{voice_id(voice)}_nohash_{n}.wav"
                        sf.write(tmp / rel, to_pcm16(x), sample_rate, subtype="PCM_16", format="WAV")
                        lists[split].append(rel)
        for split, name in LIST_FILES.items():
            (tmp / name).write_text("".join(f"{rel}\n" for rel in sorted(lists[split])))
        summary = {"seed": seed, "sample_rate": sample_rate, "clip_seconds": clip_seconds, "words": words,
                   "rates": list(rates), "pitches": list(pitches), "noise_db": list(noise_db),
                   "voices": {s: split_of[s] for s in SPLITS},
                   "clips": {s: len(lists[s]) for s in SPLITS}}
        (tmp / "kwyn_render.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_spoken_commands(root, split: str) -> list[Example]:
    """Examples of one split (train/valid/test) of a Speech Commands layout, sorted by path; labels {"word"}.

    As in Speech Commands, valid and test are the clips named in the two list files and train
    is every other clip in a word folder (folders starting with "_", e.g. _background_noise_, are not words).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    listed = {}
    for s, name in LIST_FILES.items():
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"Speech Commands list {path} not found")
        listed[s] = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    if split == "train":
        held_out = listed["valid"] | listed["test"]
        rels = [p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if not p.parent.name.startswith("_")]
        rels = [r for r in rels if r not in held_out]
    else:
        rels = list(listed[split])
    examples = [Example(root / rel, {"word": rel.split("/")[0]}) for rel in sorted(rels)]
    missing = [str(e.path) for e in examples if not e.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed clip(s) are missing, e.g.:\n  " + "\n  ".join(missing[:10]))
    return examples

"""A Speech Commands-like keyword dataset synthesised offline with espeak-ng (kwyn.speech).

Speech Commands v2 (Warden 2018) is 1 s clips of one spoken word each, split BY SPEAKER so
test speakers are unseen. We keep that design with espeak-ng voices as the speakers (an accent
plus a voice variant), each word spoken at several rates and pitches, centred in the clip,
with white noise added. Tasks: "word", and "speaker" (the voice). A speaker task cannot be
scored on unseen voices, so split_by="utterance" splits each voice's clips instead: every voice
is in train, valid and test. The files use the real on-disk layout, so the same reader serves both:

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import soundfile as sf

from kwyn.data.nsynth import SPLITS, Example
from kwyn.data.soundfont import to_pcm16
from kwyn.io import atomic_path, tqdm

CORE_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# English accents x espeak voice variants (espeak-ng-data/voices/!v), half male, half female
DEFAULT_VOICES = ("en-us", "en-us+f3", "en+m3", "en+f2", "en-gb-x-rp+m2", "en-gb-x-rp+f4", "en-gb-scotland+m4",
                  "en-gb-scotland+f1", "en-029+m7", "en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m1", "en-us-nyc+f2")
LIST_FILES = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SPLIT_BY = ("voice", "utterance")
DEFAULT_SPLIT_PER_UTTERANCE = (0.6, 0.2, 0.2)
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
    # espeak selects a voice by its file name ("en-us" for gmw/en-US), not by the languages a voice lists
    # ("en-gb" is a language of gmw/en, and no voice: synthesis would fail after the others had been rendered)
    names = {v["identifier"].rsplit("/", 1)[-1].lower() for v in list_voices()}
    for voice in voices:
        base, _, variant = voice.partition("+")
        if base.lower() not in names:
            raise ValueError(f"espeak-ng has no voice {base!r} (voice {voice!r}); the voices are the last part of "
                             "kwyn.speech.list_voices()'s identifiers, e.g. 'en' for British English")
        if variant and not (variants / variant).is_file():
            raise ValueError(f"espeak-ng has no voice variant {variant!r} (voice {voice!r}); see {variants}")
    ids = [voice_id(v) for v in voices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"voices must have distinct file-safe ids, got {ids}")


def check_split(split_by: str, split_per_voice=None, split_per_utterance=None) -> None:
    """The split keys agree: each split_per_* belongs to its split_by; utterance shares are positive, sum to 1."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if split_by == "utterance" and split_per_voice is not None:
        raise ValueError("split_per_voice: the utterance split puts every voice in every split; "
                         "give split_per_utterance (shares of each voice's clips) instead")
    if split_by == "voice" and split_per_utterance is not None:
        raise ValueError("split_per_utterance: only with split_by: utterance (the voice split deals out whole "
                         "voices, set by split_per_voice)")
    if split_per_utterance is not None:
        shares = tuple(split_per_utterance)
        if len(shares) != len(SPLITS) or min(shares) <= 0 or abs(sum(shares) - 1) > 1e-9:
            raise ValueError(f"split_per_utterance {shares} must be three positive shares (train, valid, test) "
                             "summing to 1")


def split_voices(voices, counts, seed: int) -> dict[str, list[str]]:
    """Shuffle the voices with the seed and deal them out as train, valid, test."""
    if sum(counts) != len(voices) or min(counts) < 1:
        raise ValueError(f"split_per_voice {tuple(counts)} must be >= 1 each and sum to the {len(voices)} voices")
    order = [voices[i] for i in np.random.default_rng(seed).permutation(len(voices))]
    bounds = np.cumsum([0, *counts])
    return {s: sorted(order[bounds[i]:bounds[i + 1]]) for i, s in enumerate(SPLITS)}


def utterance_counts(n_clips: int, shares) -> tuple[int, int, int]:
    """Clips of one voice per (train, valid, test): at least one each, and each within one clip of its share."""
    quotas = np.asarray(shares, dtype=np.float64) * n_clips
    # a split whose share is under one clip still gets one (a voice absent from test is never scored);
    # the clips left go to the largest remainders, which keeps every count within one clip of its quota
    counts = np.maximum(np.floor(quotas).astype(int), 1)
    spare = n_clips - counts.sum()
    if spare < 0:
        raise ValueError(f"split_per_utterance {tuple(shares)}: a voice's {n_clips} clips cannot give every split "
                         "a clip and each split its share within one clip: render more words, rates or pitches, "
                         "or raise the smallest shares")
    counts[np.argsort(counts - quotas, kind="stable")[:spare]] += 1
    return tuple(int(c) for c in counts)


def split_utterances(clips_of_voice: dict[str, list[str]], shares, seed: int) -> dict[str, list[str]]:
    """Per voice, shuffle its clips with the seed and deal them out as train, valid, test by `shares`."""
    split = {s: [] for s in SPLITS}
    for voice, clips in clips_of_voice.items():
        # a generator per voice, keyed by its name: adding a voice does not reshuffle the others
        rng = np.random.default_rng([seed, zlib.crc32(voice.encode())])
        order = [clips[i] for i in rng.permutation(len(clips))]
        bounds = np.cumsum([0, *utterance_counts(len(clips), shares)])
        for i, s in enumerate(SPLITS):
            split[s] += order[bounds[i]:bounds[i + 1]]
    return {s: sorted(clips) for s, clips in split.items()}


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
                           clip_seconds: float = 1.0, split_by: str = "voice", split_per_voice=None,
                           split_per_utterance=None, workers: int = 1) -> dict:
    """Render every word x voice x rate x pitch into out_dir (layout in the module docstring); return a summary.

    noise_db: each clip gets white noise at one of these levels (dB relative to the speech RMS),
    drawn per clip. split_by="voice": whole voices per split, split_per_voice of them per
    (train, valid, test), default about 4:1:1. split_by="utterance": every voice in every split,
    split_per_utterance its clips' shares per (train, valid, test), default 0.6/0.2/0.2.
    workers: clips rendered at once (threads, each with its own espeak-ng helper process).
    Same arguments -> byte-identical files, whatever `workers`.
    """
    voices = list(DEFAULT_VOICES if voices is None else voices)
    words = list(words)
    if len(set(words)) != len(words) or not all(re.fullmatch(r"[a-z]+", w) for w in words):
        raise ValueError(f"words must be distinct lowercase words, got {words}")
    _check_voices(voices)
    check_split(split_by, split_per_voice, split_per_utterance)
    combos = [(r, p) for r in rates for p in pitches]
    clips_of_voice = {voice: [f"{word}/{voice_id(voice)}_nohash_{n}.wav" for word in words
                              for n in range(len(combos))] for voice in voices}
    if split_by == "voice":
        if split_per_voice is None:
            n_held = max(1, round(len(voices) / 6))
            split_per_voice = (len(voices) - 2 * n_held, n_held, n_held)
        voices_of = split_voices(voices, split_per_voice, seed)
        lists = {s: sorted(rel for voice in voices_of[s] for rel in clips_of_voice[voice]) for s in SPLITS}
    else:
        voices_of = {s: sorted(voices) for s in SPLITS}
        lists = split_utterances(clips_of_voice, split_per_utterance or DEFAULT_SPLIT_PER_UTTERANCE, seed)
    n_samples = round(clip_seconds * sample_rate)

    from kwyn.speech import close_speakers

    out_dir = Path(out_dir)
    clips = [(voice, word, n, rate, pitch) for voice in voices for word in words
             for n, (rate, pitch) in enumerate(combos)]
    with atomic_path(out_dir) as tmp, tqdm(total=len(clips), desc="speak", unit="clip") as bar:
        for word in words:
            (tmp / word).mkdir(parents=True)

        def render(voice, word, n, rate, pitch):
            # a generator per clip, keyed by its content: other clips, and the order they are rendered in,
            # do not shift its noise (so `workers` threads, each with its own espeak helper, give the same files)
            key = zlib.crc32(f"{voice}|{word}|{rate}|{pitch}".encode())
            rng = np.random.default_rng([seed, key])
            level = noise_db[rng.integers(len(noise_db))]
            x = _clip(_speak(word, voice, rate, pitch, sample_rate), n_samples, level, rng)
            sf.write(tmp / f"{word}/{voice_id(voice)}_nohash_{n}.wav", to_pcm16(x), sample_rate,
                     subtype="PCM_16", format="WAV")

        try:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                for done in as_completed([pool.submit(render, *clip) for clip in clips]):
                    done.result()
                    bar.update()
        finally:
            close_speakers()
        for split, name in LIST_FILES.items():
            (tmp / name).write_text("".join(f"{rel}\n" for rel in lists[split]))
        summary = {"seed": seed, "sample_rate": sample_rate, "clip_seconds": clip_seconds, "words": words,
                   "rates": list(rates), "pitches": list(pitches), "noise_db": list(noise_db),
                   "voices": voices_of, "clips": {s: len(lists[s]) for s in SPLITS}}
        if split_by == "utterance":  # only then: a voice split's kwyn_render.json stays as it was before split_by
            summary.update(split_by=split_by,
                           split_per_utterance=list(split_per_utterance or DEFAULT_SPLIT_PER_UTTERANCE))
        (tmp / "kwyn_render.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def speaker_of(rel: str) -> str:
    """The speaker of a clip "<word>/<speaker>_nohash_<n>.wav": for a rendered clip, its voice_id."""
    return rel.split("/")[-1].split("_nohash_")[0]


def read_spoken_commands(root, split: str) -> list[Example]:
    """Examples of one split (train/valid/test) of a Speech Commands layout, sorted by path;
    labels {"word", "speaker"} (speaker: the hash before "_nohash_", for rendered clips the voice_id).

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
    examples = [Example(root / rel, {"word": rel.split("/")[0], "speaker": speaker_of(rel)}) for rel in sorted(rels)]
    missing = [str(e.path) for e in examples if not e.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed clip(s) are missing, e.g.:\n  " + "\n  ".join(missing[:10]))
    return examples


def prepare_spoken_commands(raw_root, out_dir, *, tasks=("word",), sample_rate: int, clip_seconds: float,
                            offset_seconds: float = 0.0, on_bad_audio: str = "error", workers: int = 1) -> dict:
    """Prepare train/valid/test of a Speech Commands layout for `tasks` ("word", "speaker"); return {split: summary}.

    Each task's label set is its sorted labels over all splits: the words, or the voice_ids.
    """
    from kwyn.data.prepare import prepare_split, write_meta

    splits = {s: read_spoken_commands(raw_root, s) for s in SPLITS}
    labels = {t: sorted({e.labels[t] for s in SPLITS for e in splits[s]}) for t in tasks}
    summary = {s: prepare_split(splits[s], out_dir, s, sample_rate=sample_rate, clip_seconds=clip_seconds,
                                offset_seconds=offset_seconds, label_fields=labels, on_bad_audio=on_bad_audio,
                                workers=workers) for s in SPLITS}
    write_meta(out_dir, sample_rate=sample_rate, clip_seconds=clip_seconds, tasks=labels)
    return summary

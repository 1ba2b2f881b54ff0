"""What a prepared dataset holds, in numbers and pictures (notebooks/01_prepare_data shows it).

Reads data/<dataset>/prepared as kwyn.data.prepare writes it (meta.json, <split>.csv, <split>.npy) and the
summary kwyn.pipeline.prepare returns. Everything here is cheap (a few CSV reads, three clips), so the
prepare stage's notebook stays within a second of pipeline.prepare itself.

- describe(name, params): one sentence per dataset kind saying what was rendered or read.
- preparation_table(summary): per split, what was rendered and what was prepared (written, skipped, ...).
- class_counts(prepared, task): clips per class (rows) and split (columns).
- example_clips(prepared, ...): a few clips of different classes, with their source audio when readable.
- log_mel(audio, sample_rate): a log-mel spectrogram in numpy (dB), to look at, not to train on.
- plot_examples / plot_class_balance: the two figures of the notebook.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from kwyn.io import read_json

SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------------------------------------------
# numbers


def describe(name: str, params: dict) -> str:
    """A markdown sentence saying what dataset `name` (its params.yaml entry, as a dict) is made of."""
    kind = params.get("kind")
    if kind == "soundfont_notes":
        lo, hi = params["pitches"]
        families = params.get("families")
        fams = f"{len(families)} instrument families ({', '.join(families)})" if families else \
            "every NSynth instrument family"
        train, valid, test = params["split_per_family"]
        return (f"**{name}** renders single notes with the General MIDI soundfont, NSynth's layout: MIDI pitches "
                f"{lo}-{hi} ({hi - lo + 1} pitch classes) at velocity {', '.join(map(str, params['velocities']))}, "
                f"{params['note_seconds']:g} s each, played by {fams}. Each family gives {train} / {valid} / "
                f"{test} of its programs (instruments) to train / valid / test, so the test instruments are never "
                f"heard in training. A model sees {1000 * params['clip_seconds']:g} ms of each note, taken "
                f"{1000 * (params.get('offset_seconds') or 0):g} ms after its onset.")
    if kind == "spoken_commands":
        from kwyn.data.spoken_commands import DEFAULT_SPLIT_PER_UTTERANCE, DEFAULT_VOICES

        voices = params.get("voices") or DEFAULT_VOICES
        words = params["words"]
        rates, pitches = params["rates"], params["pitches"]
        clips = len(words) * len(voices) * len(rates) * len(pitches)
        head = (f"**{name}** synthesises {len(words)} command words ({', '.join(words)}) with espeak-ng, "
                f"Speech Commands' layout: {len(voices)} voices (accent + voice variant) x {len(rates)} speaking "
                f"rates x {len(pitches)} pitches = {clips} clips of {params['clip_seconds']:g} s, each with white "
                f"noise at {' or '.join(f'{d:g}' for d in params['noise_db'])} dB below the speech. ")
        if params.get("split_by", "voice") == "utterance":
            shares = params.get("split_per_utterance") or DEFAULT_SPLIT_PER_UTTERANCE
            return head + (f"It is split **by utterance** ({' / '.join(f'{s:g}' for s in shares)} of each voice's "
                           "clips to train / valid / test): every voice is in every split, so the speaker can "
                           "be a task too.")
        per_voice = params.get("split_per_voice")
        counts = (" / ".join(map(str, per_voice)) + " voices") if per_voice else "about 4:1:1 of the voices"
        return head + (f"It is split **by voice** ({counts} to train / valid / test): test voices are unseen in "
                       "training, as Speech Commands' test speakers are.")
    root = params.get("root") or params.get("path")
    return f"**{name}** is read from {root} ({kind}) with its official split."


def preparation_table(summary: dict) -> pd.DataFrame:
    """Per split (rows): what was rendered (notes and instruments, or clips and voices) and prepared (clips
    written, skipped, silent, out of range or too long), from kwyn.pipeline.prepare's summary."""
    rendered, prepared = summary.get("rendered") or {}, summary["prepared"]
    rows = {}
    for split, s in prepared.items():
        row = {}
        if "splits" in rendered:  # soundfont notes
            r = rendered["splits"].get(split, {})
            row |= {"instruments": r.get("programs"), "notes rendered": r.get("notes"),
                    "silent notes dropped": r.get("silent_skipped")}
        elif "clips" in rendered:  # spoken commands
            voices = rendered["voices"].get(split, [])
            row |= {"voices": len(voices), "clips rendered": rendered["clips"].get(split)}
        row |= {"clips prepared": s["written"], "skipped (bad file or label)": len(s.get("skipped", [])),
                "silent crops": len(s.get("silent", []))}
        if "out_of_range" in s:
            row["outside the pitch range"] = s["out_of_range"]
        if s.get("too_long"):
            row["too long"] = len(s["too_long"])
        rows[split] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "split"
    return table


def _rows(prepared: Path, split: str) -> list[dict]:
    with open(prepared / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def splits_of(prepared) -> list[str]:
    prepared = Path(prepared)
    return [s for s in SPLITS if (prepared / f"{s}.csv").exists()]


def task_names(prepared) -> list[str]:
    """The tasks of a prepared dataset that have classes to count (meta.json's order; transcripts left out)."""
    meta = read_json(Path(prepared) / "meta.json")
    return [t for t in meta["tasks"] if meta.get("task_kinds", {}).get(t, "label") != "text"]


def class_counts(prepared, task: str | None = None) -> pd.DataFrame:
    """Clips per class (rows, meta.json's label order) and split (columns) of a single-label or multilabel task
    (default: meta.json's first task). A multilabel clip counts once for each of its labels."""
    prepared = Path(prepared)
    meta = read_json(prepared / "meta.json")
    task = task or next(iter(meta["tasks"]))
    kind = meta.get("task_kinds", {}).get(task, "label")
    if kind == "text":
        raise ValueError(f"task {task!r} is a transcript (text): it has no classes to count")
    labels = [str(label) for label in meta["tasks"][task]]
    counts = {}
    for split in splits_of(prepared):
        n = np.zeros(len(labels), dtype=int)
        for row in _rows(prepared, split):
            for index in (row[task].split(";") if kind == "multilabel" else [row[task]]):
                if index != "":
                    n[int(index)] += 1
        counts[split] = n
    table = pd.DataFrame(counts, index=pd.Index(labels, name=task))
    return table


def balance_sentence(counts: pd.DataFrame) -> str:
    """One sentence on the class balance of class_counts' table: per split, the clips and the smallest and largest
    class."""
    parts = []
    for split in counts.columns:
        c = counts[split]
        spread = (f"every class has {c.iloc[0]}" if c.min() == c.max() else
                  f"classes have {c.min()} ({c.idxmin()}) to {c.max()} ({c.idxmax()}) clips")
        parts.append(f"{split}: {c.sum()} clips, {spread}")
    return f"{len(counts)} classes of {counts.index.name}. " + "; ".join(parts) + "."


def example_clips(prepared, split: str = "test", task: str | None = None, n: int = 3,
                  offset_seconds: float = 0.0, source_seconds: float | None = 1.0) -> list[dict]:
    """`n` clips of `split`, each of a different class of `task` (default: meta.json's first), the classes spread
    evenly over the label set (first, middle, last for n=3). The k-th pick (k = 0, 1, ...) is the clip at k/n of its
    class's clips in file order, so that the examples also differ in instrument or voice.

    Each: {"id", "label", "clip" (the prepared float32 array a model sees), "sample_rate", "source" (the decoded
    source file, its first source_seconds; None when unreadable or source_seconds is None), "offset" (where the
    clip starts in the source, in samples: offset_seconds)}.
    """
    prepared = Path(prepared)
    meta = read_json(prepared / "meta.json")
    task = task or next(iter(meta["tasks"]))
    labels = meta["tasks"][task]
    rows = _rows(prepared, split)
    of_class: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        of_class.setdefault(int(row[task].split(";")[0]), []).append(i)  # a multilabel clip: its first label
    present = sorted(of_class)
    picks = list(dict.fromkeys(present[round(k)] for k in np.linspace(0, len(present) - 1, min(n, len(present)))))
    audio = np.load(prepared / f"{split}.npy", mmap_mode="r")
    sr = meta["sample_rate"]
    out = []
    for k, label in enumerate(picks):
        i = of_class[label][len(of_class[label]) * k // len(picks)]
        row = rows[i]
        out.append({"id": row["id"], "label": str(labels[label]), "clip": np.array(audio[i]),
                    "sample_rate": sr, "source": _source(prepared, row["path"], sr, source_seconds),
                    "offset": round(offset_seconds * sr)})
    return out


def _source(prepared: Path, path: str, sample_rate: int, seconds: float | None) -> np.ndarray | None:
    """The first `seconds` of the clip's source file (paths are relative to the project root, kwyn.data.prepare),
    mono at sample_rate; None when it cannot be read (moved, deleted, another sample rate)."""
    if seconds is None:
        return None
    import soundfile as sf

    candidates = [Path(path)] if Path(path).is_absolute() else \
        [parent / path for parent in prepared.resolve().parents if (parent / path).exists()]
    if not candidates or not candidates[0].exists():
        return None
    try:
        x, rate = sf.read(candidates[0], dtype="float32", frames=round(seconds * sample_rate), always_2d=True)
    except RuntimeError:
        return None
    return x.mean(axis=1) if rate == sample_rate else None


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular filters [n_mels, n_fft // 2 + 1], evenly spaced on the HTK mel scale (2595 log10(1 + f/700))."""
    fmax = sample_rate / 2 if fmax is None else fmax
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def mel_centres(sample_rate: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """The centre frequency (Hz) of each of mel_filterbank's filters."""
    fmax = sample_rate / 2 if fmax is None else fmax
    m = np.linspace(2595.0 * np.log10(1 + fmin / 700), 2595.0 * np.log10(1 + fmax / 700), n_mels + 2)[1:-1]
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def log_mel(audio, sample_rate: int, n_mels: int = 64, n_fft: int = 512, hop: int = 128,
            top_db: float = 80.0) -> np.ndarray:
    """Log-mel power spectrogram [n_mels, frames] in dB (the loudest bin 0 dB, floored top_db below it): Hann-
    windowed frames of n_fft samples every hop samples (the signal zero-padded to at least one frame)."""
    x = np.asarray(audio, dtype=np.float64).ravel()
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = 1 + (len(x) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(x[index] * np.hanning(n_fft), axis=1)) ** 2
    power = mel_filterbank(sample_rate, n_fft, n_mels) @ spectrum.T
    db = 10.0 * np.log10(np.maximum(power, 1e-12))
    return np.maximum(db - db.max(), -top_db)


# ----------------------------------------------------------------------------------------------------------------
# figures


def plot_examples(examples: list[dict], task: str = "label"):
    """One column per example clip: the log-mel spectrogram of its source audio (the crop a model sees shaded)
    or, without a source, of the clip itself. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(examples), figsize=(3.6 * len(examples), 2.8), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        sr = ex["sample_rate"]
        shown = ex["source"] if ex.get("source") is not None else ex["clip"]
        hop = 128
        spec = log_mel(shown, sr, hop=hop)
        seconds = len(shown) / sr
        centres = mel_centres(sr, spec.shape[0])
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, max(seconds, 512 / sr), 0,
                                                                             spec.shape[0]))
        ticks = [i for i in range(0, spec.shape[0], 16)]
        ax.set_yticks(ticks, [f"{centres[i] / 1000:.1f}" for i in ticks])
        if ex.get("source") is not None and len(ex["clip"]) < len(shown):
            start = ex["offset"] / sr
            ax.axvspan(start, start + len(ex["clip"]) / sr, color="cyan", alpha=0.25, lw=0)
            ax.axvline(start, color="cyan", lw=0.8)
            ax.axvline(start + len(ex["clip"]) / sr, color="cyan", lw=0.8)
        ax.set(title=f"{task} = {ex['label']}", xlabel="time (s)", ylabel="mel band centre (kHz)")
    fig.tight_layout()
    return fig


def plot_class_balance(counts: pd.DataFrame):
    """Grouped bars: clips per class (x) for each split (one colour per split). Returns the Figure."""
    import matplotlib.pyplot as plt

    width = min(12.0, max(5.0, 0.3 * len(counts) * max(1, len(counts.columns)) + 2))
    fig, ax = plt.subplots(figsize=(width, 3.0))
    counts.plot.bar(ax=ax, width=0.8, rot=90 if len(counts) > 12 else 0)
    ax.set(xlabel=counts.index.name, ylabel="clips", title=f"clips per {counts.index.name} and split")
    ax.legend(title="split", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def show(figure, dpi: int = 80, colors: int = 128) -> None:
    """Display a matplotlib figure where it is called (not at the end of the cell) and close it (the inline
    backend does not show it a second time): a PNG at `dpi`, reduced to a palette of `colors` colours so that the
    executed notebook, which is committed, stays small (a spectrogram figure: ~60 KB instead of ~220 KB)."""
    from IPython.display import Image, display

    display(Image(data=png_bytes(figure, dpi=dpi, colors=colors), format="png"))


def png_bytes(figure, dpi: int = 80, colors: int | None = 128) -> bytes:
    """The figure as PNG bytes (palette-reduced to `colors` colours unless None); the figure is closed."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    if colors is None:
        return buffer.getvalue()
    image = PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def player(audio, sample_rate: int, max_rate: int = 16000):
    """An IPython audio player for `audio`, decimated (block mean) to at most max_rate so that the executed
    notebook stays small; normalised as IPython does."""
    from IPython.display import Audio

    x = np.asarray(audio, dtype=np.float32).ravel()
    factor = max(1, int(np.ceil(sample_rate / max_rate)))
    if factor > 1:
        x = x[:len(x) // factor * factor].reshape(-1, factor).mean(axis=1)
    return Audio(x, rate=sample_rate // factor)

"""kwyn.data.explore: what notebooks/01_prepare_data shows of a prepared dataset, on real tiny rendered notes."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import TINY_DATASET  # noqa: E402

from kwyn.data import explore  # noqa: E402
from kwyn.data.nsynth import NSYNTH_FAMILIES  # noqa: E402


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    """TINY_DATASET rendered and prepared by the real code: 3 families x 1 program per split x pitches 60-62, so
    9 notes per split and 3 of each pitch. Returns (prepared dir, the summary pipeline.prepare would return)."""
    from kwyn.data.prepare import prepare_nsynth_like
    from kwyn.data.soundfont import render_nsynth_like

    root = tmp_path_factory.mktemp("explore")
    d = TINY_DATASET
    rendered = render_nsynth_like(root / "raw", seed=d["seed"], note_seconds=d["note_seconds"],
                                  pitches=tuple(d["pitches"]), families=d["families"],
                                  split_per_family=tuple(d["split_per_family"]))
    prepared = prepare_nsynth_like(root / "raw", root / "prepared", clip_seconds=d["clip_seconds"],
                                   offset_seconds=d["offset_seconds"], pitches=tuple(d["pitches"]))
    return root / "prepared", {"rendered": rendered, "prepared": prepared}


def test_class_counts_per_split(notes):
    prepared, _ = notes
    counts = explore.class_counts(prepared)  # first task: pitch
    assert counts.index.name == "pitch" and list(counts.index) == ["60", "61", "62"]
    assert list(counts.columns) == ["train", "valid", "test"]
    assert (counts.to_numpy() == 3).all()  # one instrument per family, three families
    families = explore.class_counts(prepared, "instrument_family")
    assert list(families.index) == list(NSYNTH_FAMILIES)
    for family in NSYNTH_FAMILIES:  # each rendered family: 3 pitches in every split; the others none
        assert (families.loc[family] == (3 if family in TINY_DATASET["families"] else 0)).all(), family


def test_balance_sentence_states_the_counts():
    counts = pd.DataFrame({"train": [5, 2, 4], "test": [1, 1, 1]}, index=pd.Index(["a", "b", "c"], name="word"))
    assert explore.balance_sentence(counts) == ("3 classes of word. train: 11 clips, classes have 2 (b) to 5 (a) "
                                                "clips; test: 3 clips, every class has 1.")


def test_preparation_table_of_rendered_notes(notes):
    _, summary = notes
    table = explore.preparation_table(summary)
    assert list(table.index) == ["train", "valid", "test"]
    assert (table["instruments"] == 3).all() and (table["notes rendered"] == 9).all()
    assert (table["clips prepared"] == 9).all() and (table["skipped (bad file or label)"] == 0).all()
    assert (table["outside the pitch range"] == 0).all()


def test_preparation_table_of_spoken_words():
    summary = {"rendered": {"voices": {"train": ["a", "b"], "valid": ["c"], "test": ["d"]},
                            "clips": {"train": 20, "valid": 10, "test": 10}},
               "prepared": {s: {"written": n, "skipped": [], "silent": ["x"] if s == "test" else [], "too_long": []}
                            for s, n in [("train", 20), ("valid", 10), ("test", 9)]}}
    table = explore.preparation_table(summary)
    assert table.loc["train", "voices"] == 2 and table.loc["valid", "clips rendered"] == 10
    assert table.loc["test", "clips prepared"] == 9 and table.loc["test", "silent crops"] == 1
    assert "outside the pitch range" not in table


def test_example_clips_are_distinct_classes_with_their_source(notes):
    prepared, _ = notes
    offset = TINY_DATASET["offset_seconds"]
    examples = explore.example_clips(prepared, "test", n=3, offset_seconds=offset)
    assert [e["label"] for e in examples] == ["60", "61", "62"]
    audio = np.load(prepared / "test.npy")
    ids = list(pd.read_csv(prepared / "test.csv").id)
    for e in examples:
        assert np.array_equal(e["clip"], audio[ids.index(e["id"])])
        # the source file, whole (0.3 s < 1 s), and the clip is its crop at the offset: what the figure shades
        assert len(e["source"]) == round(TINY_DATASET["note_seconds"] * 16000)
        assert e["offset"] == round(offset * 16000)
        np.testing.assert_allclose(e["source"][e["offset"]:e["offset"] + len(e["clip"])], e["clip"], atol=1e-6)
    assert len({e["id"].rsplit("-", 2)[0] for e in examples}) > 1  # not all from one instrument
    assert len(explore.example_clips(prepared, "test", n=10)) == 3  # no more than the classes
    assert all(e["source"] is None for e in explore.example_clips(prepared, "test", source_seconds=None))


def test_log_mel_finds_a_tone_in_its_band():
    sr = 16000
    t = np.arange(sr // 2) / sr
    spec = explore.log_mel(np.sin(2 * np.pi * 1000 * t), sr, n_mels=64, n_fft=512, hop=128)
    assert spec.shape == (64, 1 + (len(t) - 512) // 128)
    assert spec.max() == 0.0 and spec.min() >= -80.0
    centres = explore.mel_centres(sr, 64)
    peak = centres[spec.mean(axis=1).argmax()]
    spacing = np.diff(centres)[np.abs(centres[:-1] - 1000).argmin()]
    assert abs(peak - 1000) <= spacing  # the band holding 1 kHz, or its neighbour
    assert explore.log_mel(np.zeros(100), sr).shape == (64, 1)  # shorter than a frame: one padded frame


def test_mel_filterbank_triangles():
    bank = explore.mel_filterbank(16000, 512, 40)
    assert bank.shape == (40, 257) and bank.min() >= 0 and bank.max() <= 1
    assert (bank.max(axis=1) > 0.5).all()  # every filter covers at least one FFT bin well
    freqs = np.linspace(0, 8000, 257)
    assert (np.diff(freqs[bank.argmax(axis=1)]) >= 0).all()  # centres rise with the filter index


def test_describe_each_kind():
    notes = {"kind": "soundfont_notes", "pitches": [48, 84], "velocities": [100], "note_seconds": 1.0,
             "split_per_family": [6, 1, 1], "clip_seconds": 0.064, "offset_seconds": 0.1}
    text = explore.describe("notes", notes)
    assert "37 pitch classes" in text and "6 / 1 / 1" in text and "64 ms" in text and "100 ms" in text
    words = {"kind": "spoken_commands", "words": ["yes", "no"], "rates": [140, 170], "pitches": [35, 50, 65],
             "noise_db": [-30, -20], "clip_seconds": 1.0, "split_per_voice": [8, 2, 2]}
    text = explore.describe("words", words)
    assert "12 voices" in text and "2 x 2 speaking rates" not in text and "= 144 clips" in text  # 2 x 12 x 2 x 3
    assert "by voice" in text and "8 / 2 / 2 voices" in text
    text = explore.describe("voices", {**words, "split_by": "utterance", "split_per_utterance": [0.6, 0.2, 0.2]})
    assert "by utterance" in text and "0.6 / 0.2 / 0.2" in text


def test_figures(notes):
    prepared, _ = notes
    examples = explore.example_clips(prepared, "test", offset_seconds=TINY_DATASET["offset_seconds"])
    fig = explore.plot_examples(examples, "pitch")
    assert [ax.get_title() for ax in fig.axes] == ["pitch = 60", "pitch = 61", "pitch = 62"]
    fig = explore.plot_class_balance(explore.class_counts(prepared))
    bars = [p for p in fig.axes[0].patches]
    assert sorted(b.get_height() for b in bars) == [3] * 9  # 3 pitches x 3 splits


def test_player_decimates():
    import io

    import soundfile as sf

    x = np.sin(np.linspace(0, 100, 16000))
    half = sf.info(io.BytesIO(explore.player(x, 16000, max_rate=8000).data))
    assert half.samplerate == 8000 and half.frames == 8000
    assert sf.info(io.BytesIO(explore.player(x, 16000).data)).samplerate == 16000


def test_task_names(notes):
    prepared, _ = notes
    assert explore.task_names(prepared) == ["pitch", "instrument_family"]


def test_png_bytes_palette_is_smaller(notes):
    import io

    from PIL import Image

    prepared, _ = notes
    examples = explore.example_clips(prepared, "test", offset_seconds=TINY_DATASET["offset_seconds"])
    full = explore.png_bytes(explore.plot_examples(examples, "pitch"), dpi=80, colors=None)
    small = explore.png_bytes(explore.plot_examples(examples, "pitch"), dpi=80, colors=64)
    assert len(small) < len(full)
    image = Image.open(io.BytesIO(small))
    assert image.mode == "P" and image.size == Image.open(io.BytesIO(full)).size

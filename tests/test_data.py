import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from kwyn.audio import BadAudioError, read_audio
from kwyn.data.nsynth import NSYNTH_FAMILIES, Example, read_nsynth_split
from kwyn.data.prepare import PreparedDataset, portable_path, prepare_nsynth_like, prepare_split, write_meta
from kwyn.data.soundfont import GM_FAMILY, render_nsynth_like

SMALL = dict(seed=3, families=["flute", "brass", "vocal"], pitches=(60, 63), split_per_family=(2, 1, 1))
NSYNTH_FIELDS = {"note", "note_str", "pitch", "velocity", "instrument_family", "instrument_family_str",
                 "instrument_source", "instrument_source_str", "instrument", "instrument_str",
                 "sample_rate", "qualities", "qualities_str"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return root, render_nsynth_like(root, **SMALL)


def split_records(root, split):
    return json.loads((root / f"nsynth-{split}" / "examples.json").read_text())


def test_render_is_deterministic(raw, tmp_path):
    root, summary = raw
    again = render_nsynth_like(tmp_path, **SMALL)
    assert again["splits"] == summary["splits"]
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) > 20
    for f in files:
        assert (root / f).read_bytes() == (tmp_path / f).read_bytes(), f


def test_split_is_by_instrument(raw):
    root, summary = raw
    programs = {s: {r["instrument"] for r in split_records(root, s).values()} for s in ("train", "valid", "test")}
    assert not programs["train"] & programs["test"]
    assert not programs["train"] & programs["valid"]
    assert not programs["valid"] & programs["test"]
    # flute/brass have 8 programs: 2/1/1; vocal has 3: one each
    assert summary["splits"]["train"]["programs"] == 5
    assert summary["splits"]["valid"]["programs"] == summary["splits"]["test"]["programs"] == 3
    for s in programs:
        assert {GM_FAMILY[p] for p in programs[s]} == {"flute", "brass", "vocal"}


def test_examples_json_has_nsynth_fields(raw):
    root, _ = raw
    records = split_records(root, "train")
    for note_str, r in records.items():
        assert set(r) == NSYNTH_FIELDS
        assert r["note_str"] == note_str and r["instrument_source_str"] == "synthetic"
        assert NSYNTH_FAMILIES[r["instrument_family"]] == r["instrument_family_str"]
        assert note_str == f"{r['instrument_str']}-{r['pitch']:03d}-{r['velocity']:03d}"
        info = sf.info(root / "nsynth-train" / "audio" / f"{note_str}.wav")
        assert (info.channels, info.samplerate, info.subtype, info.frames) == (1, 16000, "PCM_16", 16000)


def test_rendered_pitch_matches_label(tmp_path):
    # all string programs into train, so the violin (GM 40, a clean tone) is surely rendered
    render_nsynth_like(tmp_path, families=["string"], pitches=(55, 79), split_per_family=(12, 0, 0))
    violin = [e for e in read_nsynth_split(tmp_path, "train") if e.labels["instrument"] == "string_synthetic_040"]
    assert len(violin) == 25
    for e in violin:
        x = read_audio(e.path, 16000)[2000:10000].numpy().astype(np.float64)
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=4 * len(x)))
        f_peak = np.argmax(spectrum) * 16000 / (4 * len(x))
        f_label = 440 * 2 ** ((e.labels["pitch"] - 69) / 12)
        assert abs(12 * np.log2(f_peak / f_label)) < 0.5, e.path


def test_read_split_errors_name_missing_files(raw, tmp_path):
    root, _ = raw
    shutil.copytree(root / "nsynth-valid", tmp_path / "nsynth-valid")
    gone = sorted((tmp_path / "nsynth-valid" / "audio").glob("*.wav"))[:2]
    for p in gone:
        p.unlink()
    with pytest.raises(FileNotFoundError, match="2 wav file") as err:
        read_nsynth_split(tmp_path, "valid")
    assert all(str(p) in str(err.value) for p in gone)
    with pytest.raises(FileNotFoundError, match="nsynth-test/examples.json"):
        read_nsynth_split(tmp_path, "test")


def make_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    empty = tmp_path / "empty.wav"
    empty.touch()
    return corrupt, empty


FAMILY_TASK = {"instrument_family": NSYNTH_FAMILIES}


def test_prepare_skip_mode_counts_bad_files(raw, tmp_path):
    root, _ = raw
    good = read_nsynth_split(root, "valid")
    corrupt, empty = make_bad_files(tmp_path)
    examples = good[:2] + [Example(corrupt, good[0].labels), Example(empty, good[0].labels)] + good[2:]
    out = tmp_path / "prep"
    summary = prepare_split(examples, out, "valid", sample_rate=16000, clip_seconds=0.5,
                            label_fields=FAMILY_TASK, on_bad_audio="skip", workers=2)
    assert summary["written"] == len(good)
    assert summary["skipped"] == [str(corrupt), str(empty)]
    rows = list(csv.DictReader(open(out / "valid.csv")))
    assert [r["path"] for r in rows] == [str(e.path) for e in good]
    x = np.load(out / "valid.npy", mmap_mode="r")
    assert x.shape == (len(good), 8000) and x.dtype == np.float32
    np.testing.assert_array_equal(x[3], read_audio(good[3].path, 16000)[:8000].numpy())


def test_bad_file_in_error_mode_leaves_no_output(raw, tmp_path):
    # the error is raised inside atomic_path, after some rows were written: nothing may remain
    root, _ = raw
    good = read_nsynth_split(root, "valid")
    corrupt, _ = make_bad_files(tmp_path)
    out = tmp_path / "prep"
    with pytest.raises(BadAudioError, match=str(corrupt)):
        prepare_split(good + [Example(corrupt, good[0].labels)], out, "valid", sample_rate=16000,
                      clip_seconds=1.0, label_fields=FAMILY_TASK)
    assert list(out.iterdir()) == []


def test_label_outside_label_set(raw, tmp_path):
    root, _ = raw
    examples = read_nsynth_split(root, "valid")
    bad = Example(examples[1].path, {"instrument_family": "kazoo"})
    with pytest.raises(ValueError, match=f"{bad.path}.*'kazoo'"):
        prepare_split([examples[0], bad], tmp_path, "valid", sample_rate=16000, clip_seconds=1.0,
                      label_fields=FAMILY_TASK)
    summary = prepare_split([examples[0], bad], tmp_path, "valid", sample_rate=16000, clip_seconds=1.0,
                            label_fields=FAMILY_TASK, on_bad_audio="skip")
    assert summary["written"] == 1 and summary["skipped"] == [str(bad.path)]


def test_empty_split_errors(tmp_path):
    with pytest.raises(ValueError, match="'test'"):
        prepare_split([], tmp_path, "test", sample_rate=16000, clip_seconds=1.0, label_fields=FAMILY_TASK)
    corrupt, empty = make_bad_files(tmp_path)
    labels = {"instrument_family": "flute"}
    with pytest.raises(ValueError, match="'test'"):
        prepare_split([Example(corrupt, labels), Example(empty, labels)], tmp_path / "out", "test",
                      sample_rate=16000, clip_seconds=1.0, label_fields=FAMILY_TASK, on_bad_audio="skip")
    assert not (tmp_path / "out" / "test.npy").exists()


def test_short_clip_is_zero_padded(raw, tmp_path):
    root, _ = raw
    examples = read_nsynth_split(root, "test")[:3]
    prepare_split(examples, tmp_path, "test", sample_rate=16000, clip_seconds=1.5, offset_seconds=0.25,
                  label_fields=FAMILY_TASK)
    x = np.load(tmp_path / "test.npy")
    assert x.shape == (3, 24000)
    np.testing.assert_array_equal(x[:, 12000:], 0)  # 1 s notes from 0.25 s: 0.75 s of audio
    np.testing.assert_array_equal(x[0, :12000], read_audio(examples[0].path, 16000)[4000:].numpy())


def test_prepare_nsynth_like_and_dataset(raw, tmp_path):
    root, summary = raw
    out = tmp_path / "prep"
    result = prepare_nsynth_like(root, out, sample_rate=8000, clip_seconds=0.5, pitches=(60, 62), workers=2)
    # pitch 63 falls outside (60, 62) and is left out
    for split in ("train", "valid", "test"):
        assert result[split]["written"] == summary["splits"][split]["notes"] * 3 // 4
        assert result[split]["out_of_range"] == summary["splits"][split]["notes"] // 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tasks"]["pitch"] == [60, 61, 62] and meta["num_samples"] == 4000

    examples = [e for e in read_nsynth_split(root, "test") if e.labels["pitch"] <= 62]
    pitch = PreparedDataset(out, "test", "pitch")
    family = PreparedDataset(out, "test", "instrument_family")
    assert pitch.num_classes == 3 and family.classes == NSYNTH_FAMILIES
    assert len(pitch) == len(family) == len(examples)
    audio, label = pitch[1]
    assert audio.shape == (4000,) and audio.dtype.is_floating_point and isinstance(label, int)
    assert [pitch.classes[i] for i in pitch.labels] == [e.labels["pitch"] for e in examples]
    assert [family.classes[i] for i in family.labels] == [e.labels["instrument_family"] for e in examples]
    with pytest.raises(KeyError, match="velocity"):
        PreparedDataset(out, "test", "velocity")


def test_write_meta(tmp_path):
    path = write_meta(tmp_path, sample_rate=16000, clip_seconds=2.0, tasks={"t": ["a", "b"]})
    assert json.loads(path.read_text()) == {"sample_rate": 16000, "clip_seconds": 2.0, "num_samples": 32000,
                                            "tasks": {"t": ["a", "b"]}}


def test_parallel_decoding_keeps_order(raw, tmp_path):
    root, _ = raw
    examples = read_nsynth_split(root, "train")
    for workers in (1, 2):
        prepare_split(examples, tmp_path / str(workers), "train", sample_rate=16000, clip_seconds=0.25,
                      label_fields=FAMILY_TASK, workers=workers)
    for name in ("train.npy", "train.csv"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_prepared_files_do_not_depend_on_where_the_project_lives(tmp_path):
    """Two clones in different folders prepare byte-identical files (DVC hashes them): paths are project-relative,
    and a file outside the project keeps its absolute path."""
    outputs = []
    for clone in ("a", "deeper/b"):
        project = tmp_path / clone
        project.mkdir(parents=True)
        (project / "params.yaml").write_text("{}\n")
        (project / "dvc.yaml").write_text("stages: {}\n")
        render_nsynth_like(project / "data" / "notes" / "raw", **SMALL)
        prepare_nsynth_like(project / "data" / "notes" / "raw", project / "data" / "notes" / "prepared")
        outputs.append({f.name: f.read_bytes() for f in sorted((project / "data" / "notes" / "prepared").iterdir())})
    assert outputs[0] == outputs[1] and b"data/notes/raw/nsynth-train/audio/" in outputs[0]["train.csv"]
    outside = tmp_path / "elsewhere.wav"
    assert portable_path(outside, tmp_path / "a" / "data" / "notes" / "prepared") == str(outside.resolve())

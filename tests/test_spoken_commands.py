import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import tiny_params

from kwyn.data.spoken_commands import (DEFAULT_VOICES, LIST_FILES, _check_voices, read_spoken_commands,
                                       render_spoken_commands, split_utterances, split_voices, utterance_counts,
                                       voice_id)
from kwyn.params import ParamsError, validate

SPLITS = ("train", "valid", "test")
WORDS = ("yes", "stop", "off")
VOICES = ("en-us", "en+f2", "en-gb-x-rp+m2", "en-029+m7")
SMALL = dict(seed=1, words=WORDS, voices=VOICES, rates=(140, 200), pitches=(50,), split_per_voice=(2, 1, 1))
# the same clips split by utterance: 6 per voice, dealt out 4 / 1 / 1 by the default shares 0.6 / 0.2 / 0.2
BY_UTTERANCE = {**{k: v for k, v in SMALL.items() if k != "split_per_voice"}, "split_by": "utterance"}


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("spoken") / "speech_commands"
    return root, render_spoken_commands(root, **SMALL)


@pytest.fixture(scope="module")
def rendered_by_utterance(tmp_path_factory):
    root = tmp_path_factory.mktemp("spoken_utterance") / "speech_commands"
    return root, render_spoken_commands(root, **BY_UTTERANCE)


def wavs(root):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav"))


def speaker(path) -> str:
    return path.name.split("_nohash_")[0]


def test_deterministic_for_a_seed_whatever_the_workers(rendered, tmp_path):
    root, summary = rendered
    again = render_spoken_commands(tmp_path / "sc", **SMALL, workers=2)  # `rendered` used one
    assert again == summary
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "sc") for p in (tmp_path / "sc").rglob("*") if p.is_file())
    for f in files:
        assert (root / f).read_bytes() == (tmp_path / "sc" / f).read_bytes(), f
    other = render_spoken_commands(tmp_path / "seed2", **{**SMALL, "seed": 2, "words": ("yes",)})
    clip = f"yes/{voice_id('en-us')}_nohash_0.wav"
    assert (root / clip).read_bytes() != (tmp_path / "seed2" / clip).read_bytes()  # other noise
    assert other["clips"]["train"] == 4


def test_layout_and_lists(rendered):
    root, summary = rendered
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(WORDS)
    assert len(wavs(root)) == len(WORDS) * len(VOICES) * 2
    lists = {s: (root / name).read_text().splitlines() for s, name in LIST_FILES.items()}
    for lines in lists.values():
        assert lines == sorted(set(lines)) and all((root / rel).is_file() for rel in lines)
    assert not set(lists["valid"]) & set(lists["test"])
    splits = {s: read_spoken_commands(root, s) for s in ("train", "valid", "test")}
    assert {s: len(v) for s, v in splits.items()} == summary["clips"] == {"train": 12, "valid": 6, "test": 6}
    assert sorted(e.path.relative_to(root).as_posix() for v in splits.values() for e in v) == wavs(root)
    assert [e.path.relative_to(root).as_posix() for e in splits["test"]] == lists["test"]
    render_info = json.loads((root / "kwyn_render.json").read_text())
    assert render_info["voices"] == summary["voices"]
    with pytest.raises(ValueError):
        read_spoken_commands(root, "validation")


def test_split_by_voice(rendered):
    root, summary = rendered
    voices = {s: {speaker(e.path) for e in read_spoken_commands(root, s)} for s in ("train", "valid", "test")}
    assert voices == {s: {voice_id(v) for v in summary["voices"][s]} for s in voices}
    assert [len(voices[s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert set.union(*voices.values()) == {voice_id(v) for v in VOICES}


def test_labels_and_clips(rendered):
    root, _ = rendered
    examples = [e for s in ("train", "valid", "test") for e in read_spoken_commands(root, s)]
    assert {e.labels["word"] for e in examples} == set(WORDS)
    for e in examples:
        assert e.labels == {"word": e.path.parent.name, "speaker": speaker(e.path)}
        info = sf.info(e.path)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (16000, 16000, 1, "PCM_16")


def test_clips_hold_centred_distinct_words(rendered):
    root, _ = rendered
    who = voice_id("en-us")
    clips = {w: sf.read(root / w / f"{who}_nohash_0.wav")[0] for w in WORDS}
    for w, x in clips.items():
        edges = np.concatenate([x[:800], x[-800:]])  # the first and last 50 ms: noise only
        middle = x[6000:10000]
        assert np.sqrt(np.mean(middle ** 2)) > 5 * np.sqrt(np.mean(edges ** 2)) > 0, w
        assert np.abs(x).max() == pytest.approx(0.5, abs=0.1)
    for a in WORDS:
        for b in WORDS:
            if a < b:  # different words, same voice and settings: weakly correlated waveforms
                corr = np.corrcoef(clips[a], clips[b])[0, 1]
                assert abs(corr) < 0.5, (a, b, corr)
    fast = sf.read(root / "yes" / f"{who}_nohash_1.wav")[0]  # the same word at 200 wpm differs too
    assert np.abs(fast - clips["yes"]).max() > 0.1


def test_default_voices_exist_and_bad_ones_fail(tmp_path):
    _check_voices(DEFAULT_VOICES)
    assert len({voice_id(v) for v in DEFAULT_VOICES}) == len(DEFAULT_VOICES) >= 12
    with pytest.raises(ValueError, match="variant"):
        render_spoken_commands(tmp_path, **{**SMALL, "voices": ("en-us+nosuch", *VOICES[1:])})
    with pytest.raises(ValueError, match="no voice 'en-gb'"):  # a language of voice gmw/en, not a voice
        _check_voices(("en-gb+m1",))
    with pytest.raises(ValueError, match="split_per_voice"):
        render_spoken_commands(tmp_path, **{**SMALL, "split_per_voice": (3, 1, 1)})


def test_voice_split_is_unchanged(rendered):
    """The default split as it was before split_by existed: the same voices, files and kwyn_render.json keys."""
    root, summary = rendered
    before = {"train": ["en+f2", "en-us"], "valid": ["en-gb-x-rp+m2"], "test": ["en-029+m7"]}
    assert summary["voices"] == split_voices(VOICES, (2, 1, 1), seed=1) == before
    assert not set(summary["voices"]["test"]) & set(summary["voices"]["train"])
    for split in SPLITS:
        ids = {voice_id(v) for v in summary["voices"][split]}
        assert [e.path.relative_to(root).as_posix() for e in read_spoken_commands(root, split)] == \
            [rel for rel in wavs(root) if speaker(Path(rel)) in ids]
    assert (root / "testing_list.txt").read_text().splitlines() == \
        sorted(f"{w}/en-029-m7_nohash_{n}.wav" for w in WORDS for n in range(2))
    assert sorted(json.loads((root / "kwyn_render.json").read_text())) == \
        ["clip_seconds", "clips", "noise_db", "pitches", "rates", "sample_rate", "seed", "voices", "words"]


def test_utterance_split_puts_every_voice_in_every_split(rendered_by_utterance, rendered):
    root, summary = rendered_by_utterance
    rels = {s: [e.path.relative_to(root).as_posix() for e in read_spoken_commands(root, s)] for s in SPLITS}
    assert sorted(r for s in SPLITS for r in rels[s]) == wavs(root)  # every clip once: none in two splits
    per_voice = len(WORDS) * 2
    for voice in VOICES:
        counts = [sum(speaker(Path(r)) == voice_id(voice) for r in rels[s]) for s in SPLITS]
        assert min(counts) >= 1 and sum(counts) == per_voice, voice
        assert all(abs(c - share * per_voice) < 1 for c, share in zip(counts, (0.6, 0.2, 0.2))), (voice, counts)
    assert summary["clips"] == {"train": 16, "valid": 4, "test": 4}
    assert summary["voices"] == {s: sorted(VOICES) for s in SPLITS}
    render_info = json.loads((root / "kwyn_render.json").read_text())
    assert render_info["split_by"] == "utterance" and render_info["split_per_utterance"] == [0.6, 0.2, 0.2]
    voice_root, _ = rendered  # the split decides where a clip goes, never what it sounds like
    for rel in wavs(root):
        assert (root / rel).read_bytes() == (voice_root / rel).read_bytes(), rel


def test_utterance_split_is_seeded_and_within_one_clip_of_its_shares():
    clips = {v: [f"{w}/{voice_id(v)}_nohash_{n}.wav" for w in WORDS for n in range(7)] for v in VOICES}
    shares = (0.5, 0.3, 0.2)
    split = split_utterances(clips, shares, seed=3)
    assert split == split_utterances(clips, shares, seed=3) != split_utterances(clips, shares, seed=4)
    for v, own in clips.items():
        for s, share in zip(SPLITS, shares):
            assert abs(sum(r in own for r in split[s]) - share * len(own)) < 1, (v, s)
    for n in range(1, 40):
        for shares in [(0.6, 0.2, 0.2), (0.8, 0.1, 0.1), (1 / 3, 1 / 3, 1 / 3), (0.34, 0.33, 0.33), (0.9, 0.05, 0.05)]:
            def fair(counts):
                return min(counts) >= 1 and all(abs(c - share * n) < 1 for c, share in zip(counts, shares))

            possible = any(fair((a, b, n - a - b)) for a in range(n + 1) for b in range(n + 1 - a))
            if possible:
                counts = utterance_counts(n, shares)
                assert sum(counts) == n and fair(counts), (n, shares, counts)
            else:  # no count gives every split a clip within one clip of its share
                with pytest.raises(ValueError, match=r"split_per_utterance .*cannot give every split a clip"):
                    utterance_counts(n, shares)


def project_params(datasets: dict, experiments: dict) -> dict:
    raw = tiny_params()
    raw["datasets"], raw["experiments"], raw["scratch"] = datasets, experiments, {}
    return raw


def test_prepared_speaker_labels_are_the_rendering_voices(tmp_path, monkeypatch):
    from kwyn import pipeline
    from kwyn.data.prepare import PreparedDataset

    voices = {"kind": "spoken_commands", "seed": 1, "words": list(WORDS), "voices": list(VOICES), "rates": [140, 200],
              "pitches": [50], "split_by": "utterance", "clip_seconds": 0.25, "offset_seconds": 0.375, "workers": 1}
    raw = project_params({"voices": voices},
                         {"voices_base": {"backbone": "crepe-tiny", "dataset": "voices", "task": "speaker",
                                          "method": "base"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    pipeline.prepare("voices")
    raw_root, prepared = tmp_path / "data" / "voices" / "raw", tmp_path / "data" / "voices" / "prepared"
    rendered_voices = json.loads((raw_root / "kwyn_render.json").read_text())["voices"]
    for split in SPLITS:
        dataset = PreparedDataset(prepared, split, "speaker")
        assert dataset.classes == sorted(voice_id(v) for v in rendered_voices[split])
        with open(prepared / f"{split}.csv", newline="") as f:
            paths = [Path(row["path"]) for row in csv.DictReader(f)]
        assert not any(p.is_absolute() for p in paths)  # relative to the project root: the same in every clone
        paths = [tmp_path / p for p in paths]
        assert len(paths) == len(dataset) and {p.parent.parent for p in paths} == {raw_root}
        for i, path in enumerate(paths):
            audio, label = dataset[i]
            assert dataset.classes[label] == speaker(path), path  # the voice in the clip's file name
            x = sf.read(path, dtype="float32")[0][6000:6000 + 4000]  # the row is that file's audio
            np.testing.assert_array_equal(audio.numpy(), x)
        words = PreparedDataset(prepared, split, "word")
        assert [words.classes[label] for label in words.labels] == [p.parent.name for p in paths]


def test_a_speaker_task_needs_the_utterance_split_and_split_keys_are_checked():
    voice_split = {"kind": "spoken_commands", "words": ["yes", "go"]}
    speaker_base = {"backbone": "crepe-tiny", "dataset": "voices", "task": "speaker", "method": "base"}
    with pytest.raises(ParamsError, match=r"experiments.e.task: task 'speaker' of dataset voices: speaker needs "
                                          r"split_by: utterance: with the voice split the test voices are never "
                                          r"seen in training"):
        validate(project_params({"voices": voice_split}, {"e": speaker_base}))
    by_utterance = {**voice_split, "split_by": "utterance"}
    params = validate(project_params({"voices": by_utterance}, {"e": speaker_base}))
    assert params.datasets["voices"].split_per_utterance is None  # the default shares, 0.6 / 0.2 / 0.2
    for dataset, expected in [
        ({**by_utterance, "split_per_utterance": [0.6, 0.3, 0.2]},
         r"datasets.voices: split_per_utterance \(0.6, 0.3, 0.2\) must be three positive shares .* summing to 1"),
        ({**by_utterance, "split_per_utterance": [1.2, -0.1, -0.1]}, r"datasets.voices: split_per_utterance .*"
                                                                       r"positive"),
        ({**by_utterance, "split_per_voice": [8, 2, 2]}, r"datasets.voices: split_per_voice: the utterance split"),
        ({**voice_split, "split_per_utterance": [0.6, 0.2, 0.2]},
         r"datasets.voices: split_per_utterance: only with split_by: utterance"),
        ({**voice_split, "split_by": "speaker"}, r"datasets.voices.split_by: Input should be 'voice' or 'utterance'"),
    ]:
        with pytest.raises(ParamsError, match=expected):
            validate(project_params({"voices": dataset}, {"e": {**speaker_base, "task": "word"}}))
    grid = {"datasets": {"words": voice_split}, "tasks": {"crepe-tiny": [["words", "speaker"]]}, "methods": ["base"]}
    with pytest.raises(ParamsError, match=r"grids.g: tasks.crepe-tiny\[0\]: task 'speaker' of dataset words: "
                                          r"speaker needs split_by: utterance"):
        validate(project_params({"voices": by_utterance}, {"e": speaker_base}) | {"grids": {"g": grid}})
    with pytest.raises(ValueError, match="split_per_voice: the utterance split"):
        render_spoken_commands("unused", **{**BY_UTTERANCE, "split_per_voice": (2, 1, 1)})

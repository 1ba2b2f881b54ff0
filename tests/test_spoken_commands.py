import json

import numpy as np
import pytest
import soundfile as sf

from kwyn.data.spoken_commands import (DEFAULT_VOICES, LIST_FILES, _check_voices, read_spoken_commands,
                                       render_spoken_commands, voice_id)

WORDS = ("yes", "stop", "off")
VOICES = ("en-us", "en+f2", "en-gb-x-rp+m2", "en-029+m7")
SMALL = dict(seed=1, words=WORDS, voices=VOICES, rates=(140, 200), pitches=(50,), split_per_voice=(2, 1, 1))


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("spoken") / "speech_commands"
    return root, render_spoken_commands(root, **SMALL)


def wavs(root):
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav"))


def speaker(path) -> str:
    return path.name.split("_nohash_")[0]


def test_deterministic_for_a_seed(rendered, tmp_path):
    root, summary = rendered
    again = render_spoken_commands(tmp_path / "sc", **SMALL)
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
        assert e.labels == {"word": e.path.parent.name}
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
    with pytest.raises(ValueError, match="split_per_voice"):
        render_spoken_commands(tmp_path, **{**SMALL, "split_per_voice": (3, 1, 1)})

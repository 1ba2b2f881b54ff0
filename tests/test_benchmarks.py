"""Each benchmark loader against a tiny copy of the dataset in its real on-disk layout."""
import csv
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from kwyn.audio import BadAudioError, read_audio
from kwyn.data.benchmarks import (GTZAN_GENRES, LIBRISPEECH_VOCAB, cross_validation, gtzan_split_lists,
                                  load_benchmark, load_esc50, load_fluent_speech_commands, load_fsd50k,
                                  load_gtzan, load_librispeech, load_magnatagatune, load_nsynth,
                                  load_speech_commands, load_urbansound8k, prepare_task)
from kwyn.data.prepare import PreparedDataset

SR = 8000


def wav(path, seconds=0.1, sr=SR, freq=440.0, channels=1, subtype=None, amplitude=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sr)) / sr
    x = amplitude * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr, subtype=subtype)
    return path


def write_csv(path, header, rows, delimiter=",", quoting=csv.QUOTE_MINIMAL):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, quoting=quoting)
        w.writerow(header)
        w.writerows(rows)


def names(examples):
    return {e.path.name for e in examples}


# ---------------------------------------------------------------- ESC-50

ESC_CLASSES = {0: "dog", 1: "rooster", 2: "pig"}  # target order, not alphabetical


def make_esc50(root, folds=(1, 2, 3, 4, 5)):
    rows = []
    for fold in folds:
        for target, category in ESC_CLASSES.items():
            name = f"{fold}-{100 + target}-A-{target}.wav"
            wav(root / "audio" / name, freq=200 + 100 * target)
            rows.append([name, fold, target, category, str(target == 0), f"{100 + target}", "A"])
    write_csv(root / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
              rows)
    return root


def test_esc50_official_folds(tmp_path):
    root = make_esc50(tmp_path / "ESC-50-master")
    data = load_esc50(root, fold=1)
    assert data.labels == ["dog", "rooster", "pig"] and data.task == "category"
    assert {e.labels["fold"] for e in data.splits["test"]} == {1}
    assert {e.labels["fold"] for e in data.splits["valid"]} == {2}
    assert {e.labels["fold"] for e in data.splits["train"]} == {3, 4, 5}
    for e in data.splits["test"] + data.splits["train"]:
        assert ESC_CLASSES[int(e.path.stem.split("-")[-1])] == e.labels["category"]
    assert load_esc50(root, fold=5).splits["valid"][0].labels["fold"] == 1  # wraps around
    with pytest.raises(ValueError, match="fold must be 1..5"):
        load_esc50(root, fold=6)


def test_cross_validation_tests_every_file_once(tmp_path):
    root = make_esc50(tmp_path)
    runs = cross_validation("esc50", root)
    assert len(runs) == 5
    tested = [e.path.name for run in runs for e in run.splits["test"]]
    assert sorted(tested) == sorted(p.name for p in (root / "audio").iterdir())
    for run in runs:
        assert not names(run.splits["test"]) & names(run.splits["train"] + run.splits["valid"])


def test_esc50_missing_files_are_listed(tmp_path):
    root = make_esc50(tmp_path)
    gone = [root / "audio" / "3-101-A-1.wav", root / "audio" / "4-102-A-2.wav"]
    for p in gone:
        p.unlink()
    with pytest.raises(FileNotFoundError, match="2 audio file") as err:
        load_esc50(root, fold=1)
    assert all(str(p) in str(err.value) for p in gone)


def test_empty_split_is_named(tmp_path):
    root = make_esc50(tmp_path, folds=(1, 3, 4, 5))  # fold 2, valid when testing on 1, is absent
    with pytest.raises(ValueError, match="split 'valid' is empty"):
        load_esc50(root, fold=1)


# ---------------------------------------------------------------- UrbanSound8K

def make_us8k(root):
    rows = []
    for fold in range(1, 11):
        for class_id, cls in ((3, "dog_bark"), (0, "air_conditioner")):
            name = f"{1000 + fold}-{class_id}-0-0.wav"
            wav(root / "audio" / f"fold{fold}" / name)
            rows.append([name, 1000 + fold, 0.0, 0.1, 1, fold, class_id, cls])
    write_csv(root / "metadata" / "UrbanSound8K.csv",
              ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return root


def test_urbansound8k_folds(tmp_path):
    root = make_us8k(tmp_path / "UrbanSound8K")
    data = load_urbansound8k(root, fold=3)
    assert data.labels == ["air_conditioner", "dog_bark"]  # by classID
    assert {e.path.parent.name for e in data.splits["test"]} == {"fold3"}
    assert {e.path.parent.name for e in data.splits["valid"]} == {"fold4"}
    assert len(data.splits["train"]) == 16 and "fold3" not in {e.path.parent.name for e in data.splits["train"]}
    assert all(e.labels["class"] == ("dog_bark" if "-3-" in e.path.name else "air_conditioner")
               for s in data.splits.values() for e in s)
    assert len(cross_validation("urbansound8k", root)) == 10


# ---------------------------------------------------------------- FSD50K

def make_fsd50k(root):
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    vocab = [(0, "Speech", "/m/09x0r"), (1, "Bark", "/m/05tny_"), (2, "Music", "/m/04rlf")]
    with open(gt / "vocabulary.csv", "w", newline="") as f:
        csv.writer(f).writerows(vocab)  # the real file has no header
    dev = [(11, "Bark,Speech", "/m/05tny_,/m/09x0r", "train"), (12, "Music", "/m/04rlf", "train"),
           (13, "Speech", "/m/09x0r", "val")]
    write_csv(gt / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], [(21, "Music,Bark", "/m/04rlf,/m/05tny_")])
    for fname, *_ in dev:
        wav(root / "FSD50K.dev_audio" / f"{fname}.wav")
    wav(root / "FSD50K.eval_audio" / "21.wav")
    return root


def test_fsd50k_multilabel(tmp_path):
    root = make_fsd50k(tmp_path)
    data = load_fsd50k(root)
    assert data.kind == "multilabel" and data.labels == ["Speech", "Bark", "Music"]
    assert [e.labels["labels"] for e in data.splits["train"]] == [["Bark", "Speech"], ["Music"]]
    assert names(data.splits["valid"]) == {"13.wav"} and names(data.splits["test"]) == {"21.wav"}
    summary = prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1)
    assert summary["train"]["written"] == 2
    ds = PreparedDataset(tmp_path / "prep", "train", "labels")
    audio, target = ds[0]
    assert target.dtype.is_floating_point and target.tolist() == [1.0, 1.0, 0.0]
    assert ds.labels.tolist() == [[1, 1, 0], [0, 0, 1]]
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["task_kinds"] == {"labels": "multilabel"}


def test_label_outside_label_set_errors_or_skips(tmp_path):
    root = make_fsd50k(tmp_path)
    write_csv(root / "FSD50K.ground_truth" / "eval.csv", ["fname", "labels", "mids"],
              [(21, "Music,Kazoo", "/m/04rlf,/m/xxx")])
    data = load_fsd50k(root)
    with pytest.raises(ValueError, match="21.wav.*Kazoo"):
        prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1)
    with pytest.raises(ValueError, match="'test': all 1 examples were skipped"):
        prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1, on_bad_audio="skip")


# ---------------------------------------------------------------- GTZAN

def make_gtzan(root, genres=("blues", "rock")):
    lists = {"train": [0, 1], "valid": [2], "test": [3]}
    for split, numbers in lists.items():
        # the published lists name .au files, other copies .wav: both must resolve
        suffix = ".au" if split == "train" else ".wav"
        lines = [f"{g}/{g}.{n:05d}{suffix}" for g in genres for n in numbers]
        (root / f"{split}_filtered.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
    for g in genres:
        for n in range(5):  # 00004 is in no list: the filtered split leaves it out
            wav(root / "genres" / g / f"{g}.{n:05d}.wav")
    return root


def test_gtzan_fault_filtered_split(tmp_path):
    data = load_gtzan(make_gtzan(tmp_path))
    assert data.labels == GTZAN_GENRES
    assert names(data.splits["train"]) == {"blues.00000.wav", "blues.00001.wav", "rock.00000.wav", "rock.00001.wav"}
    assert names(data.splits["test"]) == {"blues.00003.wav", "rock.00003.wav"}
    assert all(e.labels["genre"] == e.path.name.split(".")[0] for s in data.splits.values() for e in s)
    assert "blues.00004.wav" not in {n for s in data.splits.values() for n in names(s)}


def test_gtzan_lists_default_to_the_published_split(tmp_path):
    lists = gtzan_split_lists(tmp_path)  # no list files here: torchaudio's copy of the same split
    assert {s: len(v) for s, v in lists.items()} == {"train": 443, "valid": 197, "test": 290}
    assert not set(lists["train"]) & set(lists["test"])


# ---------------------------------------------------------------- MagnaTagATune

MTT_TAGS = ["no voice", "guitar", "classical", "slow", "techno"]


def make_mtt(root):
    # (folder, tags): guitar 4x, classical 3x, slow 3x (tie with classical, later column), techno 1x
    clips = [("0", {"guitar", "classical"}), ("5", {"guitar", "slow"}), ("b", {"techno"}),
             ("c", {"guitar", "classical"}), ("d", {"slow"}), ("f", {"guitar", "classical", "slow"})]
    rows = []
    for i, (folder, tags) in enumerate(clips):
        mp3 = f"{folder}/artist-album-{i:02d}-song-0-29.mp3"
        wav(root / mp3, seconds=0.3, sr=16000)  # soundfile writes mp3 by its suffix
        rows.append([i * 2, *[int(t in tags) for t in MTT_TAGS], mp3])
    write_csv(root / "annotations_final.csv", ["clip_id", *MTT_TAGS, "mp3_path"], rows, delimiter="\t",
              quoting=csv.QUOTE_ALL)
    return root


def test_magnatagatune_top_tags_and_folder_split(tmp_path):
    root = make_mtt(tmp_path)
    data = load_magnatagatune(root, top=3)
    assert data.kind == "multilabel" and data.labels == ["guitar", "classical", "slow"]
    assert [e.path.parent.name for e in data.splits["train"]] == ["0", "5"]  # "b" has only techno: dropped
    assert [e.path.parent.name for e in data.splits["valid"]] == ["c"]
    assert [e.path.parent.name for e in data.splits["test"]] == ["d", "f"]
    assert data.splits["test"][1].labels["tags"] == ["guitar", "classical", "slow"]
    kept = load_magnatagatune(root, top=3, drop_untagged=False)
    assert kept.splits["train"][2].labels["tags"] == []


def test_mp3_is_readable(tmp_path):
    root = make_mtt(tmp_path)
    x = read_audio(root / "0" / "artist-album-00-song-0-29.mp3", 16000)
    assert abs(x.shape[0] - 4800) < 2000 and x.abs().max() > 0.3  # mp3 adds encoder delay/padding


# ---------------------------------------------------------------- NSynth

def make_nsynth(root):
    for split, pitches in (("train", [60, 61, 130]), ("valid", [60]), ("test", [61])):
        records = {}
        for p in pitches:
            note = f"guitar_acoustic_000-{p:03d}-100"
            wav(root / f"nsynth-{split}" / "audio" / f"{note}.wav", sr=16000)
            records[note] = {"pitch": p, "velocity": 100, "instrument_family_str": "guitar",
                             "instrument_str": "guitar_acoustic_000", "instrument_source_str": "acoustic"}
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(records))
    return root


def test_nsynth_pitch(tmp_path):
    data = load_nsynth(make_nsynth(tmp_path))
    assert data.task == "pitch" and data.labels[0] == 9 and data.labels[-1] == 120
    assert [e.labels["pitch"] for e in data.splits["train"]] == [60, 61]  # 130 is out of range


# ---------------------------------------------------------------- Speech Commands v2

def make_speech_commands(root):
    for word in ("yes", "no", "up"):
        for spk in ("aaaa1111", "bbbb2222", "cccc3333"):
            wav(root / word / f"{spk}_nohash_0.wav", sr=16000)
    wav(root / "_background_noise_" / "white_noise.wav", sr=16000)
    (root / "validation_list.txt").write_text("yes/bbbb2222_nohash_0.wav\nno/bbbb2222_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/cccc3333_nohash_0.wav\nup/cccc3333_nohash_0.wav\n")
    (root / "README.md").write_text("not a class\n")
    return root


def test_speech_commands_official_lists(tmp_path):
    data = load_speech_commands(make_speech_commands(tmp_path))
    assert data.labels == ["no", "up", "yes"]
    split_of = {f"{e.labels['word']}/{e.path.name}": s for s, ex in data.splits.items() for e in ex}
    assert split_of["yes/cccc3333_nohash_0.wav"] == "test" and split_of["no/bbbb2222_nohash_0.wav"] == "valid"
    assert split_of["up/bbbb2222_nohash_0.wav"] == "train"
    assert len(split_of) == 9 and not any("noise" in k for k in split_of)


def test_speech_commands_list_naming_a_missing_file(tmp_path):
    root = make_speech_commands(tmp_path)
    (root / "up" / "cccc3333_nohash_0.wav").unlink()
    with pytest.raises(FileNotFoundError, match="up/cccc3333_nohash_0.wav"):
        load_speech_commands(root)


# ---------------------------------------------------------------- Fluent Speech Commands

def make_fsc(root):
    header = ["", "path", "speakerId", "transcription", "action", "object", "location"]  # pandas index first
    utterances = {"train": [("activate", "lights", "kitchen"), ("deactivate", "music", "none")],
                  "valid": [("activate", "lights", "kitchen")], "test": [("deactivate", "music", "none")]}
    for split, intents in utterances.items():
        rows = []
        for i, (a, o, loc) in enumerate(intents):
            path = f"wavs/speakers/spk{split}/{split}-{i}.wav"
            wav(root / path, sr=16000)
            rows.append([i, path, f"spk{split}", f"{a} {o}", a, o, loc])
        write_csv(root / "data" / f"{split}_data.csv", header, rows)
    return root


def test_fluent_speech_commands_intents(tmp_path):
    make_fsc(tmp_path / "fluent_speech_commands_dataset")
    data = load_fluent_speech_commands(tmp_path)  # the parent folder works too
    assert data.labels == ["activate/lights/kitchen", "deactivate/music/none"]
    assert [e.labels["intent"] for e in data.splits["test"]] == ["deactivate/music/none"]
    assert data.splits["valid"][0].path.name == "valid-0.wav"


def test_fluent_speech_commands_missing_says_what_to_place(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)fluent.ai.*data/.*train,valid,test.*_data.csv"):
        load_fluent_speech_commands(tmp_path)


# ---------------------------------------------------------------- LibriSpeech

def make_librispeech(root, long_seconds=0.5):
    texts = {"train-clean-100": ["HELLO WORLD", "IT'S A TEST"], "dev-clean": ["GOOD"], "test-clean": ["BAD CAT"]}
    for subset, lines in texts.items():
        chapter = root / "LibriSpeech" / subset / "103" / "1240"
        trans = []
        for i, text in enumerate(lines):
            utt = f"103-1240-{i:04d}"
            seconds = long_seconds if (subset, i) == ("train-clean-100", 1) else 0.1
            wav(chapter / f"{utt}.flac", seconds=seconds, sr=16000)
            trans.append(f"{utt} {text}")
        (chapter / "103-1240.trans.txt").write_text("\n".join(trans) + "\n")
    return root


def test_librispeech_transcripts_and_lengths(tmp_path):
    data = load_librispeech(make_librispeech(tmp_path))
    assert data.kind == "text" and data.labels == LIBRISPEECH_VOCAB
    assert [e.labels["transcript"] for e in data.splits["train"]] == ["HELLO WORLD", "IT'S A TEST"]
    assert data.splits["train"][0].path.name == "103-1240-0000.flac"
    summary = prepare_task(data, tmp_path / "prep", sample_rate=16000, clip_seconds=0.2)
    # the 0.5 s utterance does not fit a 0.2 s clip: left out, never cut off from its transcript
    assert summary["train"]["written"] == 1 and summary["train"]["too_long"] == [str(data.splits["train"][1].path)]
    ds = PreparedDataset(tmp_path / "prep", "train", "transcript")
    audio, chars = ds[0]
    assert audio.shape == (3200,) and ds.lengths.tolist() == [1600]
    assert "".join(ds.classes[i] for i in chars) == "HELLO WORLD" == ds.texts[0]
    np.testing.assert_array_equal(audio[1600:].numpy(), 0)


def test_load_benchmark_by_name(tmp_path):
    assert load_benchmark("gtzan", make_gtzan(tmp_path)).name == "gtzan"
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("timit", tmp_path)


# ---------------------------------------------------------------- bad audio inside a benchmark

def test_bad_and_odd_audio(tmp_path):
    root = make_esc50(tmp_path / "esc")
    audio = root / "audio"
    (audio / "1-100-A-0.wav").write_bytes(np.random.default_rng(0).bytes(2000))   # corrupt
    (audio / "1-101-A-1.wav").write_bytes(b"")                                      # zero-length
    wav(audio / "1-102-A-2.wav", channels=2, subtype="PCM_U8")                      # stereo, 8-bit
    wav(audio / "2-100-A-0.wav", amplitude=0.0)                                     # silent
    wav(audio / "2-101-A-1.wav", seconds=0.05)                                      # shorter than the crop
    data = load_esc50(root, fold=1)
    with pytest.raises(BadAudioError, match="1-100-A-0.wav"):
        prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1)
    summary = prepare_task(data, tmp_path / "prep", sample_rate=SR, clip_seconds=0.1, on_bad_audio="skip")
    assert summary["test"]["skipped"] == [str(audio / "1-100-A-0.wav"), str(audio / "1-101-A-1.wav")]
    assert "empty" in summary["test"]["skip_reasons"][str(audio / "1-101-A-1.wav")]
    assert summary["test"]["written"] == 1
    assert summary["valid"]["silent"] == [str(audio / "2-100-A-0.wav")] and summary["valid"]["written"] == 3

    test = PreparedDataset(tmp_path / "prep", "test", "category")
    stereo, label = test[0]
    assert test.classes[label] == "pig"
    mono = sf.read(audio / "1-102-A-2.wav", dtype="float32")[0].mean(axis=1)
    np.testing.assert_allclose(stereo.numpy(), mono, atol=1e-6)
    assert stereo.abs().max() > 0.4
    valid = PreparedDataset(tmp_path / "prep", "valid", "category")
    short = valid.ids.index("2-101-A-1")
    np.testing.assert_array_equal(valid[short][0][400:].numpy(), 0)
    assert valid[short][0][:400].abs().max() > 0.4


def test_extracted_archive_layout_is_loadable(tmp_path):
    # what download.fetch leaves for ESC-50: the GitHub zip's top folder under root
    src = make_esc50(tmp_path / "src" / "ESC-50-master")
    with tarfile.open(tmp_path / "esc.tar.gz", "w:gz") as t:
        t.add(src, arcname="ESC-50-master")
    from kwyn.data.download import LOADER_ROOT, extract
    extract(tmp_path / "esc.tar.gz", tmp_path / "root")
    assert len(load_esc50(tmp_path / "root" / LOADER_ROOT["esc50"]).splits["test"]) == 3


# ---------------------------------------------------------------- download (a local server only)

import hashlib  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402
import zipfile  # noqa: E402

from kwyn.data import download as dl  # noqa: E402

PAYLOAD = np.random.default_rng(1).bytes(50_000)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; honours Range unless told not to; can stop after `cut` bytes."""
    honour_range, cut, seen_ranges = True, None, []

    def do_GET(self):
        start = 0
        range_header = self.headers.get("Range")
        type(self).seen_ranges.append(range_header)
        if range_header and self.honour_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:self.cut] if self.cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.honour_range, RangeHandler.cut, RangeHandler.seen_ranges = True, None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_checksum(server, tmp_path):
    out = dl.download(server, tmp_path / "f.bin", SHA, timeout=5, progress=False)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    dl.download(server, tmp_path / "g.bin", "md5:" + hashlib.md5(PAYLOAD).hexdigest(), timeout=5, progress=False)
    with pytest.raises(dl.ChecksumError, match="expected 0000"):
        dl.download(server, tmp_path / "h.bin", "md5:" + "0" * 32, timeout=5, progress=False)
    assert not (tmp_path / "h.bin").exists() and not (tmp_path / "h.bin.part").exists()


def test_download_resumes_after_interruption(server, tmp_path):
    RangeHandler.cut = 20_000  # the connection drops after 20 kB
    with pytest.raises(OSError, match="run again to resume"):
        dl.download(server, tmp_path / "f.bin", SHA, timeout=5, progress=False)
    assert (tmp_path / "f.bin.part").stat().st_size == 20_000
    RangeHandler.cut = None
    dl.download(server, tmp_path / "f.bin", SHA, timeout=5, progress=False)
    assert RangeHandler.seen_ranges == [None, "bytes=20000-"]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_complete_part_and_server_without_range(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)  # whole but not yet verified: server answers 416
    dl.download(server, tmp_path / "f.bin", SHA, timeout=5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    RangeHandler.honour_range = False  # answers 200 with the whole file: start over, do not append
    (tmp_path / "g.bin.part").write_bytes(PAYLOAD[:1000])
    dl.download(server, tmp_path / "g.bin", SHA, timeout=5, progress=False)
    assert (tmp_path / "g.bin").read_bytes() == PAYLOAD


def test_extract_refuses_paths_outside(tmp_path):
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as z:
        z.writestr("top/a.txt", "a")
    dl.extract(tmp_path / "ok.zip", tmp_path / "out")
    assert (tmp_path / "out" / "top" / "a.txt").read_text() == "a"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../evil.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        dl.extract(tmp_path / "evil.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_download_table_and_manual_dataset(tmp_path):
    for name, remotes in dl.DATASETS.items():
        for r in remotes:
            assert r.url.startswith("http") and r.filename
            if r.checksum:
                algorithm, hexdigest = r.checksum.split(":")
                assert len(hexdigest) == {"md5": 32, "sha256": 64}[algorithm], (name, r.filename)
    with pytest.raises(RuntimeError, match="fluent.ai"):
        dl.fetch("fluent_speech_commands", tmp_path)
    with pytest.raises(KeyError, match="no download"):
        dl.fetch("timit", tmp_path)

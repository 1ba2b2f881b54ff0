"""Fetch the publicly hosted benchmarks: resumable HTTP download, checksum check, extraction.

Loaders never call this: a folder that already holds a dataset is used as it is. fetch()
downloads into root/downloads/ (a partial file "<name>.part" is resumed with an HTTP Range
request), verifies the checksum where the host publishes one (None: none is known, so only
the download's length is checked), then extracts archives into root.

Not here: Fluent Speech Commands (its licence has each user request it; see
kwyn.data.benchmarks.FSC_MANUAL). FSD50K's audio comes as split zips (.z01...): fetch()
joins them with `zip -s 0` when the zip tool exists, else says which command to run.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kwyn.io import tqdm


@dataclass(frozen=True)
class Remote:
    url: str
    filename: str
    checksum: str | None = None   # "md5:<hex>" or "sha256:<hex>"
    extract: bool = True


_ZENODO_FSD = "https://zenodo.org/records/4060432/files/"
_MTT = "https://mirg.city.ac.uk/datasets/magnatagatune/"
_GTZAN_LISTS = "https://raw.githubusercontent.com/jordipons/sklearn-audio-transfer-learning/master/data/index/GTZAN/"
_OPENSLR = "https://www.openslr.org/resources/12/"
_NSYNTH = "http://download.magenta.tensorflow.org/datasets/nsynth/"

# Checksums as published by the hosts (Zenodo md5s; torchaudio's sha256s for OpenSLR, TensorFlow
# and Marsyas). ESC-50's GitHub zip, MTT and NSynth publish none.
DATASETS: dict[str, list[Remote]] = {
    "esc50": [Remote("https://github.com/karolpiczak/ESC-50/archive/refs/heads/master.zip", "ESC-50-master.zip")],
    "urbansound8k": [Remote("https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz?download=1",
                            "UrbanSound8K.tar.gz", "md5:9aa69802bbf37fb986f71ec1483a196e")],
    "fsd50k": [Remote(_ZENODO_FSD + f"{name}?download=1", name, f"md5:{md5}", extract="audio" not in name)
               for name, md5 in [
                   ("FSD50K.ground_truth.zip", "ca27382c195e37d2269c4c866dd73485"),
                   ("FSD50K.metadata.zip", "b9ea0c829a411c1d42adb9da539ed237"),
                   ("FSD50K.dev_audio.z01", "faa7cf4cc076fc34a44a479a5ed862a3"),
                   ("FSD50K.dev_audio.z02", "8f9b66153e68571164fb1315d00bc7bc"),
                   ("FSD50K.dev_audio.z03", "1196ef47d267a993d30fa98af54b7159"),
                   ("FSD50K.dev_audio.z04", "d088ac4e11ba53daf9f7574c11cccac9"),
                   ("FSD50K.dev_audio.z05", "81356521aa159accd3c35de22da28c7f"),
                   ("FSD50K.dev_audio.zip", "c480d119b8f7a7e32fdb58f3ea4d6c5a"),
                   ("FSD50K.eval_audio.z01", "3090670eaeecc013ca1ff84fe4442aeb"),
                   ("FSD50K.eval_audio.zip", "6fa47636c3a3ad5c7dfeba99f2637982")]],
    "gtzan": [Remote("http://opihi.cs.uvic.ca/sound/genres.tar.gz", "genres.tar.gz",
                     "sha256:24347e0223d2ba798e0a558c4c172d9d4a19c00bb7963fe055d183dadb4ef2c6")]
             + [Remote(_GTZAN_LISTS + f"{s}_filtered.txt", f"{s}_filtered.txt", extract=False)
                for s in ("train", "valid", "test")],
    "magnatagatune": [Remote(_MTT + "annotations_final.csv", "annotations_final.csv", extract=False)]
                     + [Remote(_MTT + f"mp3.zip.00{i}", f"mp3.zip.00{i}", extract=False) for i in (1, 2, 3)],
    "nsynth": [Remote(_NSYNTH + f"nsynth-{s}.jsonwav.tar.gz", f"nsynth-{s}.jsonwav.tar.gz")
               for s in ("train", "valid", "test")],
    "speech_commands": [Remote("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                               "speech_commands_v0.02.tar.gz",
                               "sha256:af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58")],
    "librispeech": [Remote(_OPENSLR + f"{name}.tar.gz", f"{name}.tar.gz", f"sha256:{sha}") for name, sha in [
        ("train-clean-100", "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2"),
        ("dev-clean", "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3"),
        ("test-clean", "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23")]],
}


# where a loader's root lies under fetch()'s root, when the archive has a top folder of its own
LOADER_ROOT = {"esc50": "ESC-50-master", "urbansound8k": "UrbanSound8K"}


class ChecksumError(ValueError):
    pass


def file_checksum(path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path, checksum: str | None) -> None:
    if checksum is None:
        return
    algorithm, expected = checksum.split(":", 1)
    actual = file_checksum(path, algorithm)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected}")


def download(url: str, dest, checksum: str | None = None, *, timeout: float = 60,
             chunk_size: int = 1 << 20, progress: bool = True) -> Path:
    """url -> dest, resuming dest.part; dest appears only once complete and verified.

    A server that ignores Range (answers 200) restarts the file from the beginning; a checksum
    mismatch deletes the partial file (it cannot be resumed into a good one) and raises.
    """
    dest = Path(dest)
    if dest.is_file():
        verify(dest, checksum)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: nothing past `have`, so the part file is already whole
            raise
        response = None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                         disable=not progress) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    try:
        verify(part, checksum)
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def extract(archive, into) -> None:
    """Unpack a .zip or .tar(.gz) into `into`; members escaping `into` are refused."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not (into / name).resolve().is_relative_to(into.resolve()):
                    raise ValueError(f"{archive}: member {name!r} would land outside {into}")
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")  # "data" refuses absolute paths, links out, devices


def _join_split_zip(downloads: Path, stem: str) -> Path:
    """FSD50K.dev_audio.zip + .z01.. -> one zip (`zip -s 0`); MTT's mp3.zip.00N are plain byte pieces."""
    joined = downloads / f"{stem}.joined.zip"
    if joined.is_file():
        return joined
    if stem == "mp3":
        with open(joined.with_suffix(".tmp"), "wb") as out:
            for piece in sorted(downloads.glob("mp3.zip.0*")):
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out)
        joined.with_suffix(".tmp").replace(joined)
        return joined
    command = ["zip", "-s", "0", str(downloads / f"{stem}.zip"), "--out", str(joined)]
    if shutil.which("zip") is None:
        raise RuntimeError(f"joining the split archive {stem} needs the zip tool: run {' '.join(command)} "
                           f"and unzip the result into {downloads.parent}")
    subprocess.run(command, check=True)
    return joined


def fetch(name: str, root, *, progress: bool = True) -> Path:
    """Download, verify and extract dataset `name` under root; returns the folder to give its loader.
    Finished steps (a verified file, an extracted archive) are skipped when run again."""
    if name == "fluent_speech_commands":
        from kwyn.data.benchmarks import FSC_MANUAL
        raise RuntimeError(FSC_MANUAL)
    if name not in DATASETS:
        raise KeyError(f"no download for {name!r}; known: {sorted(DATASETS)}")
    root = Path(root)
    downloads = root / "downloads"
    for remote in DATASETS[name]:
        path = download(remote.url, downloads / remote.filename, remote.checksum, progress=progress)
        if not remote.extract:
            if path.suffix in (".txt", ".csv"):
                shutil.copyfile(path, root / remote.filename)
            continue
        marker = downloads / f".{remote.filename}.extracted"
        if not marker.exists():
            extract(path, root)
            marker.touch()
    for stem in {"fsd50k": ["FSD50K.dev_audio", "FSD50K.eval_audio"], "magnatagatune": ["mp3"]}.get(name, []):
        marker = downloads / f".{stem}.extracted"
        if not marker.exists():
            extract(_join_split_zip(downloads, stem), root)
            marker.touch()
    return root / LOADER_ROOT.get(name, "")

"""Atomic file output: a stage interrupted mid-write leaves the old file or none, never half a file.

What lands in place carries the permissions the user's umask gives (0644 under umask 022), whatever
wrote it: tempfile.mkdtemp makes its folder 0700, and some writers (safetensors' save_file) create
their file 0600, which other users of a shared machine could not read.

Progress output too: `from kwyn.io import tqdm` is the progress bar class of every kwyn loop, tqdm.auto's
(an ipywidgets bar in JupyterLab, a text bar in plain Python: tests, `python -m kwyn`, scripts), except in a
kernel whose environment has KWYN_PROGRESS=text, which gets text bars on stdout. The papermill engine `kwyn`
starts its kernels so (kwyn.papermill_engine): a widget bar shows only its first state in `papermill
--log-output` (what `dvc repro` prints) and in viewers without the widget state; a text bar shows progress as
it goes and its final state after.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path


def _umask_modes(directory: Path) -> tuple[int, int]:
    """(file mode, folder mode) that the umask gives new files and folders: 0o666 and 0o777 less the umask.

    Read off a probe folder instead of os.umask(), which can only be read by setting it: a race with
    threads creating files meanwhile."""
    probe = directory / ".umask-probe"
    probe.mkdir(0o777)
    try:
        folder_mode = stat.S_IMODE(probe.stat().st_mode)  # 0o777 & ~umask
    finally:
        probe.rmdir()
    return folder_mode & 0o666, folder_mode


def _apply_umask(path: Path, file_mode: int, dir_mode: int) -> None:
    """Give `path` (a file, or a folder and everything under it) the umask's modes; executables stay so."""
    entries = [path] if not path.is_dir() else [path, *path.rglob("*")]
    for entry in entries:
        if entry.is_symlink():
            continue
        if entry.is_dir():
            entry.chmod(dir_mode)
        else:
            executable = stat.S_IMODE(entry.stat().st_mode) & 0o111
            entry.chmod(dir_mode if executable else file_mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    Works for files and for directories (the block creates what it likes at the yielded path).
    What is moved into place gets the modes of the user's umask (module doc).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        _apply_umask(tmp, *_umask_modes(tmp.parent))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


PROGRESS_ENV = "KWYN_PROGRESS"  # "text": text progress bars even in a Jupyter kernel


def __getattr__(name: str):
    """`tqdm`: kwyn's progress bar class (module docstring), imported on first use, not with kwyn.io."""
    if name == "tqdm":
        if os.environ.get(PROGRESS_ENV) == "text":
            return _text_bar()
        from tqdm.auto import tqdm
        return tqdm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _text_bar():
    """tqdm's text bar, written to stdout: a notebook shows stderr in red, as if something were wrong."""
    import sys

    from tqdm.std import tqdm

    class TextBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("file", sys.stdout)
            super().__init__(*args, **kwargs)

    return TextBar

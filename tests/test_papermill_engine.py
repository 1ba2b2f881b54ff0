"""papermill's `--engine kwyn` (dvc.yaml): the kernel is stopped at once after the last cell, and
what the cells wrote and printed is all there."""
import json
import os
import subprocess
import sys

import nbformat
import pytest


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _papermill(src, out, *args):
    return subprocess.run([sys.executable, "-m", "papermill", "--engine", "kwyn", "-k", "python3", *args,
                           str(src), str(out)], capture_output=True, text=True)


def test_kwyn_engine_keeps_outputs_and_files(tmp_path):
    target, at_exit = tmp_path / "written.txt", tmp_path / "at_exit.txt"
    _notebook(tmp_path / "nb.ipynb", "n = 1",
              f"import atexit, pathlib\natexit.register(pathlib.Path({str(at_exit)!r}).write_text, 'ran')",
              f"import os\nwith open({str(target)!r}, 'w') as f:\n    f.write('x' * (1 << 20))\n"
              "print('pid', os.getpid(), 'wrote', n)")
    done = _papermill(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", "-p", "n", "3")
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "x" * (1 << 20)  # the last cell's file, complete
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"] == {"n": 3}
    printed = "".join(executed["cells"][-1]["outputs"][0]["text"])
    assert printed.split()[2:] == ["wrote", "3"]
    # stopped, not asked to exit: the interpreter's teardown (atexit included) never ran ...
    assert not at_exit.exists()
    with pytest.raises(ProcessLookupError):  # ... and the kernel is gone, not left behind
        os.kill(int(printed.split()[1]), 0)


def test_kwyn_engine_reports_a_failing_cell(tmp_path):
    _notebook(tmp_path / "nb.ipynb", "raise ValueError('bad input named here')", "print('not reached')")
    done = _papermill(tmp_path / "nb.ipynb", tmp_path / "out.ipynb")
    assert done.returncode != 0
    assert "bad input named here" in done.stderr
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert executed["cells"][-1]["outputs"] == []  # papermill stopped at the failing cell


def test_kwyn_engine_kernel_is_quiet_encrypted_and_shows_text_bars(tmp_path):
    """No `Kernel is running over TCP without encryption` warning in a stage's log: the kernel gets CurveZMQ
    keys; kwyn's bars are text there, so that --log-output shows them advance (kwyn.io.tqdm)."""
    _notebook(tmp_path / "nb.ipynb", "n = 30",
              "import json, ipykernel\nfrom kwyn.io import tqdm\n"
              "info = json.loads(ipykernel.get_connection_info())\n"
              "from tqdm.notebook import tqdm_notebook\n"
              "print('curve' if info.get('curve_publickey') else 'plain', issubclass(tqdm, tqdm_notebook))\n"
              "for _ in tqdm(range(n), desc='steps', mininterval=0):\n    pass")
    done = _papermill(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", "--log-output")
    assert done.returncode == 0, done.stderr
    assert "without encryption" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    assert "steps: 100%" in done.stderr  # the bar, logged as it advanced
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    streams = {name: "".join("".join(o["text"]) for o in executed["cells"][-1]["outputs"] if o["name"] == name)
               for name in ("stdout", "stderr")}
    assert streams["stdout"].split()[:2] == ["curve", "False"]  # encrypted channels; a text bar, not a widget
    assert "steps: 100%" in streams["stdout"] and not streams["stderr"]  # on stdout: not shown in red


def test_kwyn_progress_bars_are_text_in_plain_python_and_widgets_in_a_kernel(tmp_path):
    from nbclient import NotebookClient

    widget = "from tqdm.notebook import tqdm_notebook\nfrom kwyn.io import tqdm\nprint(issubclass(tqdm, tqdm_notebook))"
    plain = subprocess.run([sys.executable, "-c", widget], capture_output=True, text=True, check=True).stdout
    assert plain.split() == ["False"]  # a text bar outside a kernel (tests, python -m kwyn, scripts)
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(widget)]
    NotebookClient(book, kernel_name="python3", timeout=120).execute()  # as JupyterLab starts a kernel
    assert book.cells[0].outputs[0]["text"].split() == ["True"]  # ipywidgets is installed: a widget bar

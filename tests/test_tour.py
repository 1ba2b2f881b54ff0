"""notebooks/00_tour.ipynb runs top to bottom as a reader runs it (nbclient, cwd notebooks/), its checks pass,
and it stays a quick read: the method on a 2-core CPU in well under 5 minutes."""
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tour_runs_and_its_checks_pass():
    from nbclient import NotebookClient

    book = nbformat.read(ROOT / "notebooks" / "00_tour.ipynb", as_version=4)
    started = time.perf_counter()
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    seconds = time.perf_counter() - started
    print(f"\nnotebooks/00_tour.ipynb ran in {seconds:.0f} s")
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "All checks of the tour passed" in printed  # the last cell: every assert before it held
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # its figures
    assert all("text/html" in o.data for o in outputs if o.output_type == "execute_result")  # tables, no reprs
    # nothing on stderr: no warnings, and the bars are widgets (ipywidgets is installed), not "IProgress not found"
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert seconds < 300

"""The three walk-throughs run top to bottom against the committed artifacts (one of them quantizes), and are
stored with their outputs. `pytest --nbmake notebooks/` runs them too (notebooks/conftest.py)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from quant import folder

NOTEBOOKS = sorted((folder.REPO / "notebooks").glob("quantize_*.ipynb"))


def test_the_three_notebooks_are_stored_executed_with_a_plot_each():
    """Stored as `make notebooks` (notebooks/execute.py) leaves them: every code cell run, no error, a PNG plot."""
    assert [p.name for p in NOTEBOOKS] == ["quantize_8bit.ipynb", "quantize_equalization.ipynb", "quantize_mixed.ipynb"]
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{p.name}: not executed; run `make notebooks`"
        outputs = [o for c in code for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], p.name
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{p.name}: no plot"


@pytest.mark.skipif(not all(folder.variant_file(v, ".info").is_file() for v in folder.VARIANTS),
                    reason="variant folders not built yet (quant build)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder.REPO)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors

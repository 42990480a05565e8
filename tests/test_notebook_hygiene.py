"""Every notebook is committed clean: no outputs, no papermill metadata, kernel python3,
a `parameters` cell that reads CDFLOW_SMOKE, and figures saved through figure_dir."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    assert path.stem[:2].isdigit() and path.stem[2] == "_", "name must be NN_topic.ipynb"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), "stored outputs"
    assert not any(c.get("execution_count") for c in code), "stored execution counts"
    assert "papermill" not in nb["metadata"], "papermill metadata"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert tagged[0] <= 2, "the parameters cell comes among the first code cells"
    params = "".join(code[tagged[0]]["source"])
    assert 'os.environ.get("CDFLOW_SMOKE") == "1"' in params
    assert "INTERACTIVE" in params
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    src = "".join("".join(c["source"]) for c in code)
    assert "plt.show()" not in src or "INTERACTIVE" in src
    if "save_figure(" in src:
        assert "figure_dir(" in src, "figures go through figure_dir so smoke runs never touch figures/"

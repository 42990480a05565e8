"""The figure pipeline end to end on a small subset: papermill with injected parameters
writes the executed notebook, its HTML and its figures where it is told to."""
import json

import pytest

from cdflow_lib import pipeline


def test_pipeline_runs_a_notebook_with_injected_parameters(tmp_path):
    figures, build = tmp_path / "figures", tmp_path / "build"
    assert pipeline.main(["--only", "03", "--smoke", "--figures", str(figures), "--build", str(build)]) == 0
    executed = build / "03_actnorm.ipynb"
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "INTERACTIVE = False" in "".join(injected[0]["source"])
    assert (build / "html" / "03_actnorm.html").stat().st_size > 10_000
    pngs = sorted((figures / "03_actnorm").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_pipeline_rejects_an_unknown_notebook(tmp_path):
    with pytest.raises(ValueError, match="no notebook"):
        pipeline.main(["--only", "99", "--build", str(tmp_path)])

"""The figure pipeline end to end on a small subset: papermill with injected parameters
writes the executed notebook, its HTML and its figures where it is told to."""
import json
from pathlib import Path

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


# --- reproducible outputs: float noise never rewrites a committed file; a real change does ---

NOISY_NOTEBOOK = r'''
import json, os
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pathlib import Path
rng = np.random.default_rng(int(os.environ["NOISE_SEED"]))
scale = float(os.environ.get("SCALE", "1"))
noise = lambda: 1e-9 * rng.standard_normal()          # last-bit float noise, different every run
out = Path(FIG_ROOT) / "01_noisy"
out.mkdir(parents=True, exist_ok=True)
json.dump({"srcc": scale * 0.6861234567 + noise(), "n": 312, "per_scale": [scale * v + noise() for v in (0.1, 2.5, 33.3)]},
          open(out / "numbers.json", "w"))
(out / "table.csv").write_text(f"name,value,count\na,{scale * 1.23456789 + noise()!r},3\n")
field = scale * np.linspace(0, 1, 64 * 64).reshape(64, 64)
field[10, 10] += 1e-3 * rng.standard_normal()          # one value that may change its colour-map bin
fig, ax = plt.subplots(figsize=(2, 2))
ax.imshow(field, cmap="magma", vmin=0, vmax=2)
ax.plot([0, 63], [0, 63 + 1e-6 * rng.standard_normal()])
fig.savefig(out / "map.png", dpi=50, metadata={"Software": None})
'''


def _noisy_notebook(folder):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("FIG_ROOT = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(NOISY_NOTEBOOK)]
    folder.mkdir()
    nbformat.write(nb, folder / "01_noisy.ipynb")


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_rerun_with_float_noise_leaves_outputs_byte_identical_and_a_real_change_rewrites_them(tmp_path, monkeypatch, capfd):
    _noisy_notebook(tmp_path / "nbs")
    figures, build = tmp_path / "figures", tmp_path / "build"
    run = ["--notebooks", str(tmp_path / "nbs"), "--figures", str(figures), "--build", str(build), "--no-html"]
    monkeypatch.setenv("NOISE_SEED", "0")
    assert pipeline.main(run) == 0
    first = _files(figures)
    assert set(map(str, first)) == {"01_noisy/numbers.json", "01_noisy/table.csv", "01_noisy/map.png"}
    assert json.loads(first[Path("01_noisy/numbers.json")])["srcc"] == 0.686123      # 6 significant digits
    assert b"1.23457" in first[Path("01_noisy/table.csv")]
    for seed in ("1", "2"):                       # other noise: nothing rewritten, byte for byte
        monkeypatch.setenv("NOISE_SEED", seed)
        assert pipeline.main(run) == 0
        assert _files(figures) == first
    out, err = capfd.readouterr()
    assert "0 new, 0 changed, 3 unchanged" in out
    assert "without encryption" not in out + err, "the kernels must not warn about TCP (they run over IPC)"
    monkeypatch.setenv("SCALE", "1.5")            # a real change of every output is written
    assert pipeline.main(run) == 0
    changed = _files(figures)
    assert all(changed[p] != first[p] for p in first)
    assert json.loads(changed[Path("01_noisy/numbers.json")])["srcc"] == pytest.approx(1.5 * 0.6861234567, rel=1e-5)
    assert "0 new, 3 changed" in capfd.readouterr().out


@pytest.mark.slow
def test_rerun_of_a_course_notebook_reproduces_its_figures_byte_for_byte(tmp_path):
    figures, build = tmp_path / "figures", tmp_path / "build"
    run = ["--only", "03", "--smoke", "--figures", str(figures), "--build", str(build), "--no-html"]
    assert pipeline.main(run) == 0
    first = _files(figures)
    assert len(first) >= 2
    assert pipeline.main(run) == 0
    assert _files(figures) == first


def test_json_outputs_are_rounded_and_noise_restores_the_previous_bytes(tmp_path):
    path = tmp_path / "n.json"
    old = b'{"a": 0.1234565, "b": [1, 2.0]}'          # a previous version, in its own formatting
    path.write_text(json.dumps({"a": 0.12345650000004, "b": [1, 2.0000000001]}))
    assert pipeline.settle_outputs(tmp_path, {path: old}) == dict(new=0, changed=0, noise=1, unchanged=0)
    assert path.read_bytes() == old
    path.write_text(json.dumps({"a": 0.1235, "b": [1, 2.0]}))           # the 4th digit moved: real
    assert pipeline.settle_outputs(tmp_path, {path: old})["changed"] == 1
    assert json.loads(path.read_text()) == {"a": 0.1235, "b": [1, 2.0]}
    path.write_text(json.dumps({"x": 1 / 3, "nan": float("nan"), "s": "0.333333333", "i": 7}))
    assert pipeline.settle_outputs(tmp_path, {})["new"] == 1
    assert path.read_text() == '{\n  "x": 0.333333,\n  "nan": NaN,\n  "s": "0.333333333",\n  "i": 7\n}\n'


def test_csv_outputs_round_numbers_but_not_integers_or_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("name,score,n\npair 1,0.1234567891,0012\npair 2,1e-07,3\n")
    pipeline.settle_outputs(tmp_path, {})
    assert path.read_text() == "name,score,n\npair 1,0.123457,0012\npair 2,1e-07,3\n"


def _png(array) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="png")
    return buf.getvalue()


def test_png_noise_rule_accepts_a_few_slightly_changed_pixels_only():
    import numpy as np

    base = np.tile(np.arange(100, dtype=np.uint8), (100, 1))[..., None].repeat(3, -1)
    few = base.copy()
    few[5, :50] += 3                                 # 50 of 10,000 pixels, by 3 levels: noise
    much = base.copy()
    much[5, :50] += 40                               # the same pixels by 40 levels: a real change
    wide = base.copy()
    wide[:20] += 1                                   # 20 % of the pixels by one level: a real change
    assert pipeline.same_png(_png(base), _png(few))
    assert not pipeline.same_png(_png(base), _png(much))
    assert not pipeline.same_png(_png(base), _png(wide))
    assert not pipeline.same_png(_png(base), _png(base[:99]))
    assert not pipeline.same_png(_png(base), b"not a png")

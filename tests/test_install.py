"""The library outside the repository: a wheel installed into a fresh environment computes a CD.

Builds a wheel of this checkout (`pip wheel --no-deps`), installs it with `--no-deps` into a
new virtual environment whose dependencies come from the test environment (a .pth line
pointing at its site-packages, where the editable install's hook is NOT processed), and
runs Python from a temporary folder outside the repository.
"""
import json
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("install")
    # build from a clean copy of what the wheel is made of (a stale build/ in the checkout must not leak in)
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cdflow_lib", src / "cdflow_lib", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, text=True)
    wheel = next(wheels.glob("cdflow_lib-*.whl"))
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    with zipfile.ZipFile(wheel) as z:                 # install = unpack the wheel (no pip needed in the new venv)
        z.extractall(site)
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = root / "elsewhere"
    outside.mkdir()
    return dict(wheel=wheel, python=python, site=site, cwd=outside)


def run_outside(installed, code: str, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CDFLOW_DATA")}
    env.update(env_extra or {})
    return subprocess.run([str(installed["python"]), "-c", textwrap.dedent(code)], cwd=installed["cwd"], env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_is_lean_and_carries_only_the_default_model(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        names = z.namelist()
    size = installed["wheel"].stat().st_size
    assert size < 20 * 2**20, f"wheel is {size / 2**20:.1f} MiB"
    pretrained = sorted(n for n in names if n.startswith("cdflow_lib/pretrained/"))
    assert any(n.endswith("cdflow-small-photos.pt") for n in pretrained), pretrained
    assert any(n.endswith("cdflow-small-photos.md") for n in pretrained), "the model card travels with the model"
    assert not any(n.endswith(".pt") and "photos" not in n for n in pretrained), pretrained
    assert not any(n.startswith(("data/", "notebooks/", "figures/", "tests/")) for n in names)


def test_installed_wheel_computes_a_cd_with_the_shipped_model_outside_the_repo(installed):
    out = run_outside(installed, """
        import json, torch, cdflow_lib
        from importlib.metadata import version
        from cdflow_lib import checkpoints
        model = checkpoints.load_pretrained()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, 64, 64, generator=g)
        y = (x * 0.9 + 0.05).clamp(0, 1)
        print(json.dumps(dict(file=cdflow_lib.__file__, version=cdflow_lib.__version__, meta=version("cdflow_lib"),
                              cd=float(model(x, y)), same=float(model(x, x)))))
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(installed["site"]) in res["file"], f"imported {res['file']}, not the installed wheel"
    assert res["version"] == res["meta"]
    assert res["cd"] > 10 * res["same"] > 0, res


def test_notebook_only_helpers_outside_a_checkout_say_where_they_looked(installed):
    out = run_outside(installed, """
        from cdflow_lib import paths
        from cdflow_lib.data import corpus
        from cdflow_lib.plotting import figure_dir
        for call in (lambda: corpus.load_photo("mate_Aqua"), lambda: figure_dir("00_tour")):
            try:
                call()
            except paths.MissingDataError as exc:
                print("MISSING:", exc)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("MISSING:")]
    assert len(lines) == 2, out.stdout
    assert "CDFLOW_DATA" in lines[0] and "photos" in lines[0]
    assert "checkout" in lines[1]
    pipeline = subprocess.run([str(installed["python"]), "-m", "cdflow_lib.pipeline"], cwd=installed["cwd"],
                              capture_output=True, text=True, timeout=300)
    assert pipeline.returncode == 2 and "Traceback" not in pipeline.stderr and "checkout" in pipeline.stderr


def test_cdflow_data_points_outside_code_at_the_repository_data(installed):
    out = run_outside(installed, """
        from cdflow_lib.data import corpus
        print(corpus.load_photo("mate_Aqua").shape)
    """, {"CDFLOW_DATA": str(REPO / "data")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(512, 768, 3)" in out.stdout

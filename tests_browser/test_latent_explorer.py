"""Notebook 16 (the latent explorer) in a real browser: JupyterLab + headless Chromium.

Run with ``make test-browser`` (not part of ``make test``: it needs Debian's ``chromium``
package, which ``.ci/run`` installs). What it proves: the notebook runs top to bottom in
JupyterLab (smoke mode, exercise solutions on), every widget renders, and moving the
amplitude slider, changing the scale and the direction each change the decoded image's pixels.

Everything runs on a copy of the notebook in a temporary folder (JupyterLab autosaves), on
127.0.0.1 with a random token, with bounded waits; the server's process group is killed at the
end whatever happens. A screenshot of the explorer is saved as build/browser/latent_explorer.png.

Measured facts this relies on: ../shared/notes/browser-test.md (in the project's workspace).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "16_latent_explorer.ipynb"
SHOTS = REPO / "build" / "browser"
CHROMIUM = os.environ.get("CDFLOW_CHROMIUM", "/usr/bin/chromium")
SERVER_START_S = 90        # JupyterLab answering /api/status
KERNEL_READY_S = 90        # kernel name shown and the execution indicator idle
RUN_ALL_S = 420            # every cell executed (smoke mode; about 1 min on 2 idle cores)
UPDATE_S = 60              # one widget update (0.1-1.5 s measured; a new scale computes its PCA)

try:
    import playwright.sync_api as playwright
except ImportError as exc:      # a failure, not a skip: this folder runs only when asked for
    raise ImportError("the browser test needs Playwright: pip install '.[browser]' (make test-browser does)") from exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebook 16; yields (url, root, log)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's package (apt-get install -y chromium) "
                    "or point CDFLOW_CHROMIUM at a Chromium executable")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = root / ".settings"
    # no news toast over the notebook
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # render every cell: in the default windowed mode cells out of view show empty prompts
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, CDFLOW_SMOKE="1", CDFLOW_SOLUTIONS="1", CDFLOW_INTERACTIVE="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               JUPYTER_RUNTIME_DIR=str(root / ".runtime"), JUPYTER_CONFIG_DIR=str(root / ".config"))
    env.pop("MPLBACKEND", None)                     # the kernel's inline backend, as a reader has it
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={root / '.workspaces'}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def answering():
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}; log: {root / 'jupyterlab.log'}:\n"
                        + (root / "jupyterlab.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(answering, SERVER_START_S, "JupyterLab to answer on " + url, poll_s=0.5)
        yield f"{url}/lab/tree/{NOTEBOOK.name}?token={token}", root
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    url, _ = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.on("dialog", lambda d: d.accept())      # a beforeunload dialog must not cancel anything
            pg.goto(url, timeout=60_000)
            yield pg
        finally:
            browser.close()


def prompts(pg) -> list[str]:
    return pg.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()


def explorer_image_hash(pg) -> str:
    """sha256 of the bytes behind the explorer's <img> (a blob: URL), fetched inside the page."""
    data = pg.evaluate("""async () => {
        const img = document.querySelector('.widget-image');
        if (!img || !img.src) return null;
        const buf = await (await fetch(img.src)).arrayBuffer();
        return Array.from(new Uint8Array(buf));
    }""")
    assert data, "the explorer's image (.widget-image) has no picture"
    return hashlib.sha256(bytes(data)).hexdigest()


def report_text(pg) -> str:
    return pg.locator(".widget-html-content", has_text="CD(original, edit)").last.inner_text()


def number(text: str) -> float:
    """A slider readout as a float (ipywidgets writes negatives with U+2212, the minus sign)."""
    return float(text.strip().replace("\u2212", "-"))


def screenshot(pg, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"latent_explorer_{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"prompts: {prompts(pg)}; screenshot {path}")
    return path


def set_slider(pg, label: str, value: float):
    """Type `value` into the readout of the slider described `label` and commit with Enter."""
    slider = pg.locator(".widget-hslider", has_text=label).last
    readout = slider.locator(".widget-readout")
    readout.click()
    pg.keyboard.press("Control+A")
    pg.keyboard.type(str(value))
    pg.keyboard.press("Enter")


def changed_image(pg, before: str, what: str) -> str:
    return wait_for(lambda: (h := explorer_image_hash(pg)) != before and h, UPDATE_S, f"the image to change after {what}")


def test_explorer_runs_renders_and_responds(page, lab):
    pg = page
    # 1. the kernel is ready (Run All clicked earlier is silently dropped)
    wait_for(lambda: "Python 3" in (pg.locator(".jp-Toolbar-kernelName").first.inner_text()
                                     if pg.locator(".jp-Toolbar-kernelName").count() else ""),
             KERNEL_READY_S, "the kernel name in the toolbar")
    wait_for(lambda: pg.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]").count() > 0,
             KERNEL_READY_S, "the kernel to be idle")
    n_cells = len(prompts(pg))
    assert n_cells > 5, f"the notebook shows only {n_cells} code cells"

    # 2. Run All through the menu; every prompt gets a number and the kernel goes idle
    t0 = time.monotonic()
    pg.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    pg.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    wait_for(lambda: any(p.strip() != "[ ]:" for p in prompts(pg)), 30, "Run All to start a cell")
    errors = pg.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')

    def all_ran():
        if errors.count():                          # Run All stops at an error: say which, at once
            screenshot(pg, "error")
            pytest.fail("a cell raised:\n" + "\n".join(errors.all_inner_texts())[:3000])
        return (all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts(pg))
                and pg.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]").count() > 0)

    try:
        wait_for(all_ran, RUN_ALL_S, "every cell to run", poll_s=1.0)
    except pytest.fail.Exception:
        screenshot(pg, "timeout")
        raise
    run_all_s = time.monotonic() - t0

    # 3. every widget rendered
    body = pg.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in body, "a widget failed to render"
    wait_for(lambda: pg.locator(".widget-image").count() == 1, UPDATE_S, "the explorer's image widget")
    assert "Loading widget" not in pg.locator(".jp-Notebook").inner_text(), "a widget is stuck loading"
    for cls, n in ((".widget-hslider", 2), (".widget-dropdown", 3), (".widget-toggle-buttons", 1)):
        assert pg.locator(cls).count() == n, f"expected {n} {cls} controls, found {pg.locator(cls).count()}"
    pg.locator(".widget-image").scroll_into_view_if_needed()
    first = explorer_image_hash(pg)
    first_report = report_text(pg)

    # 4. the controls change the decoded image: drag the amplitude handle with the mouse, then
    #    type a scale into its slider's readout, then pick another direction
    amplitude = pg.locator(".widget-hslider", has_text="amplitude").last
    readout_before = amplitude.locator(".widget-readout").inner_text()
    amplitude.evaluate("el => el.scrollIntoView({block: 'center'})")    # not under the notebook's toolbar
    handle, base = amplitude.locator(".noUi-handle").bounding_box(), amplitude.locator(".noUi-base").bounding_box()
    pg.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    pg.mouse.down()
    pg.mouse.move(base["x"] + 0.1 * base["width"], base["y"] + base["height"] / 2, steps=8)
    pg.mouse.up()
    after_amplitude = changed_image(pg, first, "dragging the amplitude slider")
    readout_after = amplitude.locator(".widget-readout").inner_text()
    assert number(readout_after) < number(readout_before), \
        f"dragging the handle left should lower the amplitude: {readout_before} -> {readout_after}"
    assert report_text(pg) != first_report, "the CD report did not follow the amplitude"
    set_slider(pg, "scale", 1)
    after_scale = changed_image(pg, after_amplitude, "setting the scale to 1")
    pg.locator(".widget-dropdown", has_text="direction").locator("select").select_option(label="PC 2")
    changed_image(pg, after_scale, "choosing direction PC 2")
    assert "PC 2 of scale 1" in report_text(pg), f"the report does not follow the controls: {report_text(pg)!r}"

    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.locator(".widget-image").scroll_into_view_if_needed()
    pg.screenshot(path=str(SHOTS / "latent_explorer.png"))
    print(f"Run All took {run_all_s:.0f} s; screenshot in {SHOTS / 'latent_explorer.png'}")

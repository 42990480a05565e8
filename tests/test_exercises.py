"""Exercises that check themselves (the convention, in full: notebooks/EXERCISES.md).

Each exercise is a markdown task ("### Exercise: ..."), an answer cell tagged "exercise" (the
answer variable set to None, the solution under ``if SOLUTIONS:``) and a check cell tagged
"exercise-check". ``make test`` and ``make figures`` run the solutions (SOLUTIONS True), which
proves every exercise solvable; here we prove the checks have teeth: with the answer left
empty, running a notebook stops at its first check with an AssertionError.
"""
import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MIN_EXERCISES = 2
#: Every notebook of the course has exercises; the tour (00) is a map, not a lesson.
WITH_EXERCISES = [p for p in NOTEBOOKS if int(p.stem[:2]) >= 1]


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def exercises(nb) -> list[tuple[int, int, int]]:
    """(task, answer, check) cell indices of every exercise of a notebook."""
    cells, found = nb["cells"], []
    for i, c in enumerate(cells):
        if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("### Exercise"):
            found.append((i, i + 1, i + 2))
    return found


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_every_notebook_has_exercises_with_answer_and_check_cells(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    found = exercises(nb)
    assert len(found) >= MIN_EXERCISES, f"{path.name}: {len(found)} exercises, at least {MIN_EXERCISES} expected"
    params = next(c for c in cells if "parameters" in tags(c))
    assert 'SOLUTIONS = os.environ.get("CDFLOW_SOLUTIONS") == "1"' in "".join(params["source"])
    for task, answer, check in found:
        assert answer < len(cells) and check < len(cells), f"{path.name}: exercise at cell {task} is incomplete"
        a, c = cells[answer], cells[check]
        assert "exercise" in tags(a) and "if SOLUTIONS:" in "".join(a["source"]), \
            f"{path.name}: cell {answer} must be the answer cell (tag 'exercise', solution under `if SOLUTIONS:`)"
        assert "exercise-check" in tags(c) and "assert" in "".join(c["source"]), \
            f"{path.name}: cell {check} must be the check cell (tag 'exercise-check' with asserts)"
    checks = [i for i, c in enumerate(cells) if "exercise-check" in tags(c)]
    assert checks == [c for _, _, c in found], f"{path.name}: a check cell without its exercise"


def run_until_first_check(path: Path, tmp_path: Path):
    """Execute `path` in smoke mode with SOLUTIONS False, up to and including its first check cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    first_check = exercises(nb)[0][2]
    nb.cells = nb.cells[:first_check + 1]
    env_before = {k: os.environ.get(k) for k in ("CDFLOW_SOLUTIONS", "CDFLOW_SMOKE", "CDFLOW_FIG_DIR")}
    os.environ.pop("CDFLOW_SOLUTIONS", None)
    os.environ["CDFLOW_SMOKE"] = "1"
    os.environ["CDFLOW_FIG_DIR"] = str(tmp_path)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as exc:
        return nb, exc
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, None


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["01_colour_difference_basics", "02_change_of_variables"])
def test_check_fails_when_the_answer_is_left_empty(stem, tmp_path):
    path = next((p for p in NOTEBOOKS if p.stem == stem), None)
    assert path is not None, f"notebook {stem} is missing"
    nb, error = run_until_first_check(path, tmp_path)
    assert error is not None, f"{stem}: the first exercise check passed with the answer left empty"
    assert "AssertionError" in str(error)
    executed = [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")]
    failing = executed[-1]
    assert "exercise-check" in failing.metadata.get("tags", []), "the notebook failed before reaching the check"

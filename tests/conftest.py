"""Shared fixtures: paths to ../shared, the official fixture, seeded RNG."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official_cdflow"
SPCD_LABELS = SHARED / "fixtures" / "spcd_labels"


def require_path(path: Path) -> Path:
    """Skip when a ../shared fixture is absent - unless CDFLOW_REQUIRE_FIXTURES=1 (CI), then fail."""
    if not path.exists():
        msg = f"fixture not found: {path}"
        if os.environ.get("CDFLOW_REQUIRE_FIXTURES") == "1":
            pytest.fail(msg + " (CDFLOW_REQUIRE_FIXTURES=1 makes it mandatory)")
        pytest.skip(msg)
    return path


@pytest.fixture
def official_dir() -> Path:
    return require_path(OFFICIAL)


@pytest.fixture
def spcd_labels_dir() -> Path:
    return require_path(SPCD_LABELS)


# Two pytest workers share two cores: more BLAS threads than cores makes torch ~20x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

"""Where the repository's files are, and what happens outside a source checkout.

The installed package carries the metric and its default model (``cdflow_lib/pretrained``).
Everything else - the photo corpus, other checkpoints, figures, notebooks - lives in the
repository. Code that needs those files finds them in the checkout the package was
imported from, or under ``$CDFLOW_DATA`` (a folder laid out like the repository's
``data/``); when neither holds them it raises `MissingDataError` naming where it looked.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming a data folder (holding photos/, pretrained/) outside a checkout.
ENV_DATA = "CDFLOW_DATA"
#: The installed package's folder, and the folder above it (the repository root in a checkout).
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent
#: Models that travel with the package (package data).
PACKAGE_PRETRAINED = PACKAGE_DIR / "pretrained"


class MissingDataError(FileNotFoundError):
    """Repository files (photos, figures, notebooks, extra checkpoints) are not where the code looked."""


def in_checkout() -> bool:
    """True when the package is imported from a source checkout of the repository."""
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "notebooks").is_dir()


def data_root() -> Path:
    """The data folder: $CDFLOW_DATA when set, else the checkout's data/ (which may not exist)."""
    return Path(os.environ[ENV_DATA]).expanduser() if os.environ.get(ENV_DATA) else CHECKOUT / "data"


def require_data(relative: str, what: str) -> Path:
    """data_root() / relative, or a MissingDataError saying where it looked and how to point elsewhere."""
    path = data_root() / relative
    if not path.exists():
        raise MissingDataError(
            f"{what} is not here: looked for {path}. It lives in the repository (data/{relative}), not in the "
            f"installed package; run from a checkout of the repository or set ${ENV_DATA} to a folder "
            f"that holds {relative}")
    return path


def require_checkout(relative: str, what: str) -> Path:
    """CHECKOUT / relative for notebook-only tools (figures, notebooks), or a MissingDataError outside a checkout."""
    if not in_checkout():
        raise MissingDataError(
            f"{what} needs a source checkout of the repository (looked for {CHECKOUT / relative}); "
            f"cdflow_lib is installed at {PACKAGE_DIR}. Clone the repository and run from there, "
            f"or pass the folder explicitly")
    return CHECKOUT / relative

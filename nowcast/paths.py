"""Where the project finds radar archives and trained models.

Both are configurable through the environment so that users point the tools at their
own archives: ``NOWCAST_DATA_ROOT`` (a pysteps-data style tree) and
``NOWCAST_MODELS_DIR`` (the model registry). The defaults suit a checkout of this
repository: ``../shared/data/pysteps-data`` beside it and its own ``models/``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT_ENV = "NOWCAST_DATA_ROOT"
MODELS_DIR_ENV = "NOWCAST_MODELS_DIR"


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The root of the radar archive (may not exist: callers say so clearly)."""
    if override is not None:
        return Path(override)
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    return PROJECT_ROOT.parent / "shared" / "data" / "pysteps-data"


def models_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The root of the model registry (``NAME/VERSION/`` folders)."""
    if override is not None:
        return Path(override)
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    return PROJECT_ROOT / "models"

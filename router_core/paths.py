"""Where data, caches and the bundled artifact live. Environment is read at call time, never at import."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def default_data_dir() -> Path:
    """The shared routing data: ``$CSCR_DATA_DIR``, else the first ``shared/data`` found walking up
    from the working directory and from this package (the repository sits beside ``shared/``)."""
    env = os.environ.get("CSCR_DATA_DIR")
    if env:
        return Path(env)
    for start in (Path.cwd(), _PACKAGE_DIR):
        for parent in (start, *start.parents):
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise FileNotFoundError(
        "routing data not found: set CSCR_DATA_DIR or pass --data (expected ../shared/data beside the repo)"
    )


def cache_dir() -> Path:
    """Embedding and descriptor caches: ``$CSCR_CACHE_DIR``, else ``~/.cache/cscr``."""
    env = os.environ.get("CSCR_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "cscr"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Trained router artifacts that ship inside the package."""
    return _PACKAGE_DIR / "artifacts"

"""Where data, caches and the bundled artifact live, and how a file there is replaced. Environment
is read at call time, never at import. Imports nothing internal."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

DATA_HELP = (
    "the benchmark data (routerbench_subset/, mmlu_pro/, alpacaeval/) is needed only to train, evaluate and "
    "describe routers; the gateway and the replay upstream run without it. Point CSCR_DATA_DIR (or --data) at "
    "a copy of the project's shared data folder, or check the repository out beside it as ../shared/data "
    "(README.md, 'Two commands')"
)


class DataNotFoundError(FileNotFoundError):
    """The benchmark data folder is nowhere to be found; the message says where to get it."""


def explicit_data_dir() -> Path | None:
    """``$CSCR_DATA_DIR`` when set (the user chose a data folder), else None."""
    env = os.environ.get("CSCR_DATA_DIR")
    return Path(env) if env else None


def default_data_dir() -> Path:
    """The benchmark data: ``$CSCR_DATA_DIR``, else the first ``shared/data`` found walking up from
    the working directory and from this package (the repository sits beside ``shared/``)."""
    env = explicit_data_dir()
    if env is not None:
        if not env.is_dir():
            raise DataNotFoundError(f"benchmark data not found: CSCR_DATA_DIR={env} is not a folder; {DATA_HELP}")
        return env
    for start in (Path.cwd(), _PACKAGE_DIR):
        for parent in (start, *start.parents):
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    places = " or ".join(dict.fromkeys(str(p) for p in (Path.cwd(), _PACKAGE_DIR.parent)))
    raise DataNotFoundError(
        f"benchmark data not found: CSCR_DATA_DIR is unset and no shared/data above {places}; {DATA_HELP}"
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


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8; parents created) through a temporary file in
    the same folder and a rename, so a reader (another process using the same cache) sees the old
    file or the new one, never half of one. Each call writes its own temporary file, so concurrent
    writers do not write into or rename away each other's (the last rename wins), and one that
    fails removes it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        tmp.replace(p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_results(out: Path, summary: dict[str, object], markdown: str) -> None:
    """An evaluation's result files: ``out/results.json`` (the numbers the docs are rendered from)
    and ``out/results.md`` (``markdown``, also printed)."""
    import json

    write_atomic(Path(out) / "results.json", json.dumps(summary, indent=1, default=float) + "\n")
    write_atomic(Path(out) / "results.md", markdown)
    print(markdown)

"""Where the tests' data comes from.

Tests that start the replay upstream or need RouterBench prompts use the replay set bundled in the
package (``gateway.replay.BUNDLED_REPLAY``): they run in a fresh clone. Tests that train, evaluate
or describe on the full benchmark data request ``benchmark_data_dir`` (or use it through
``pytestmark = pytest.mark.usefixtures("benchmark_data_dir")``) and are skipped, with the reason,
where that data is absent (CI has ``../shared/data``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from router_core.paths import DataNotFoundError, default_data_dir


@pytest.fixture(scope="session")
def benchmark_data_dir() -> Path:
    """The full benchmark data folder, or skip: ``$CSCR_DATA_DIR`` / ``shared/data`` above the repo."""
    try:
        return default_data_dir()
    except DataNotFoundError as exc:
        pytest.skip(f"needs the full benchmark data: {exc}")


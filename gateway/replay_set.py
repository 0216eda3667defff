"""``cscr replay-set``: rebuild the replay set bundled in the package (``gateway.replay.BUNDLED_REPLAY``)
from the full RouterBench subset.

It keeps, for all 3,178 rows, what the replay upstream and the tests read: ``sample_id``,
``prompt_text``, ``eval_name``, ``split`` and the 11 models' ``|model_response`` and ``|total_cost``
(not the grades, the list-form prompt or the oracle column). zstd level 19 brings the 3.2 MB source
to ~1.2 MB. The output depends only on the source and the pyarrow version; ``--check`` verifies
that a bundled file holds exactly the source's values.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from gateway.replay import BUNDLED_REPLAY, replay_columns
from router_core.paths import write_atomic

KEPT = ("eval_name", "split")  # beside the replay columns: the tests pick prompts by task and split
SOURCE = Path("routerbench_subset") / "routerbench_subset.parquet"


def build(source: Path, out: Path) -> int:
    """Write the replay set of ``source`` to ``out``; returns its size in bytes."""
    import pandas as pd

    frame = pd.read_parquet(source, columns=replay_columns(KEPT))
    data = io.BytesIO()
    frame.to_parquet(data, compression="zstd", compression_level=19, index=False)
    write_atomic(out, data.getvalue())  # a fixed "<name>.tmp" let two builds clobber each other
    return out.stat().st_size


def differences(source: Path, bundled: Path) -> list[str]:
    """Columns whose values differ between ``bundled`` and ``source`` (empty: the set is exact)."""
    import pandas as pd

    names = replay_columns(KEPT)
    want = pd.read_parquet(source, columns=names)
    got = pd.read_parquet(bundled)
    if list(got.columns) != names or len(got) != len(want):
        return [f"shape: {len(got)} rows x {list(got.columns)}, expected {len(want)} rows x {names}"]
    return [c for c in names if not want[c].equals(got[c])]


def main(argv: list[str]) -> int:
    """``cscr replay-set [--data DIR] [--out PATH] [--check]``."""
    from router_core.paths import default_data_dir

    parser = argparse.ArgumentParser(
        prog="cscr replay-set",
        description=__doc__.split("\n\n")[0],
            )
    parser.add_argument("--data", type=Path, default=None,
                        help="benchmark data folder holding routerbench_subset/ "
                        "(default: $CSCR_DATA_DIR, else shared/data above the repository)")
    parser.add_argument("--out", type=Path, default=BUNDLED_REPLAY,
                        help="where to write the replay set (default: the bundled one)")
    parser.add_argument("--check", action="store_true", help="only verify --out against the source; write nothing")
    args = parser.parse_args(argv)
    source = (args.data or default_data_dir()) / SOURCE
    if not source.is_file():
        print(f"cscr replay-set: {source} not found", file=sys.stderr)
        return 2
    if args.check:
        bad = differences(source, args.out)
        print(f"{args.out}: " + (f"differs from {source} in {bad}" if bad else f"matches {source}"))
        return 1 if bad else 0
    size = build(source, args.out)
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) from {source}")
    return 0

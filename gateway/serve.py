"""``cscr serve``: run the gateway with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cscr serve", description="Run the cscr gateway.")
    parser.add_argument("--config", default="gateway.yaml", help="path to gateway.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="worker processes (uvicorn); all shared state must then live in a redis:// store",
    )
    parser.add_argument(
        "--with-upstream", type=int, metavar="PORT", default=None,
        help="also run the replay upstream on this port in a child process (the demo default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    import uvicorn

    from gateway.app import create_app
    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"cscr serve: invalid config: {err}", file=sys.stderr)
        return 2
    child = None
    if args.with_upstream is not None:
        import subprocess

        child = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "upstream", "--host", "127.0.0.1",
             "--port", str(args.with_upstream)]
        )
    if args.workers > 1 and config.store.startswith("memory://"):
        print("cscr serve: warning: --workers > 1 with a memory:// store gives each worker its own budgets; "
              "use a redis:// store to share them", file=sys.stderr)
    try:
        if args.workers > 1:
            # Workers are separate processes: each builds its app from the config path.
            os.environ["CSCR_CONFIG"] = str(args.config)
            uvicorn.run("gateway.serve:app_factory", factory=True, host=args.host, port=args.port,
                        workers=args.workers, log_level=args.log_level, access_log=False)
        else:
            uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level,
                        access_log=False)
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=10)
    return 0


def app_factory() -> Any:
    """Per-worker app for ``--workers N`` (uvicorn imports this by name in each worker process)."""
    from gateway.app import create_app
    from gateway.config import load_config

    return create_app(load_config(os.environ["CSCR_CONFIG"]))

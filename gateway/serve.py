"""``cscr serve``: run the gateway with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cscr serve", description="Run the cscr gateway.")
    parser.add_argument("--config", default="gateway.yaml", help="path to gateway.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: every log line is one JSON object (access-log fields at top level)")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="one JSON line per request on the cscr.access logger (also server.access_log)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="worker processes (uvicorn); all shared state must then live in a redis:// store",
    )
    parser.add_argument(
        "--with-upstream", type=int, metavar="PORT", default=None,
        help="also run the replay upstream on this port in a child process (the demo default)",
    )
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish on SIGTERM")
    args = parser.parse_args(argv)
    from gateway.observe import configure_logging

    configure_logging(args.log_level, args.log_format, args.access_log)
    # Worker processes (--workers N) set up their own logging the same way (app_factory).
    os.environ["CSCR_LOG_LEVEL"], os.environ["CSCR_LOG_FORMAT"] = args.log_level, args.log_format
    os.environ["CSCR_ACCESS_LOG"] = "1" if args.access_log else "0"
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # json: uvicorn's own lines go through the same handler (log_config=None: uvicorn adds none).
    log_kw: dict[str, Any] = {"log_config": None} if args.log_format == "json" else {}

    import uvicorn

    from gateway.app import create_app
    from gateway.config import parse_config_text, read_config_text
    from gateway.errors import ConfigError

    try:
        text = read_config_text(args.config)
        config = parse_config_text(text, str(args.config))
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
                        workers=args.workers, log_level=args.log_level, access_log=False, **log_kw,
                        timeout_graceful_shutdown=args.graceful_timeout)
        else:
            app = create_app(config, config_path=args.config, config_text=text)
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, **log_kw,
                        access_log=False, timeout_graceful_shutdown=args.graceful_timeout)
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=10)
    return 0


def app_factory() -> Any:
    """Per-worker app for ``--workers N`` (uvicorn imports this by name in each worker process)."""
    from gateway.app import create_app
    from gateway.config import parse_config_text, read_config_text
    from gateway.observe import configure_logging

    configure_logging(os.environ.get("CSCR_LOG_LEVEL", "info"), os.environ.get("CSCR_LOG_FORMAT", "text"),
                      os.environ.get("CSCR_ACCESS_LOG", "1") == "1")
    path = os.environ["CSCR_CONFIG"]
    text = read_config_text(path)
    return create_app(parse_config_text(text, path), config_path=path, config_text=text)

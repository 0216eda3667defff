"""``cscr serve``: run the gateway with uvicorn, optionally with the replay upstream as a child.

With ``--with-upstream PORT`` the gateway listens only once the upstream answers ``GET /health``,
and stops with exit status 1 if the upstream dies, at start or later: a gateway whose providers are
all gone would otherwise say ready and answer every chat with a 502.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway.serve")

OUR_LOGGERS = ("gateway", "router_core", "descriptors")
# Third-party loggers whose INFO lines are load chatter (faiss "Loading faiss with AVX2 support",
# model2vec and skeletoken while distilling the static encoder, litellm): WARNING and up still show.
CHATTY_LOGGERS = ("faiss", "model2vec", "skeletoken", "sentence_transformers", "LiteLLM", "litellm", "httpx")
UPSTREAM_START_S = 60.0  # loading the replay set takes ~1-3 s; a slow disk or busy box gets margin


def setup_logging(level: str, fmt: str = "text", access: bool = True) -> None:
    """Our loggers at ``level``; third-party ones at WARNING, except transformers at ERROR: its
    "BertModel LOAD REPORT ... UNEXPECTED position_ids" warning is benign and reads like a failure.
    Progress bars off unless debugging (they are not log lines). ``fmt``: ``text`` or ``json`` lines
    on stderr; the access log (``cscr.access``) is at INFO whatever ``level`` is, unless ``access`` is
    False (or ``server.access_log: false``)."""
    from gateway.observe import configure_logging

    name = level.upper()
    configure_logging("warning", fmt, access)
    for ours in OUR_LOGGERS:
        logging.getLogger(ours).setLevel(name)
    if name == "DEBUG":
        return
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(name)))
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("LITELLM_LOG", "WARNING")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cscr serve", description="Run the cscr gateway.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default="gateway.yaml", help="path to gateway.yaml")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="level of our own log lines (third-party load chatter shows from WARNING)")
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
        help="also run the replay upstream on this port in a child process (the demo default); the gateway "
             "listens once it answers and exits with status 1 if it dies",
    )
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds in-flight requests get to finish on SIGTERM")
    return parser.parse_args(argv)


@dataclass
class Upstream:
    """The replay upstream child and its watchdog."""

    proc: subprocess.Popen[bytes]
    port: int
    stopping: threading.Event = field(default_factory=threading.Event)
    died: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, port: int, log_level: str) -> Upstream:
        # Own session: Ctrl-C in a terminal reaches only the gateway, which stops the child itself
        # (otherwise the watchdog would take the child's exit for a crash).
        level = "warning" if log_level in ("info", "warning") else log_level
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "upstream", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", level],
            start_new_session=True,
        )
        return cls(proc, port)

    def wait_healthy(self, timeout_s: float = UPSTREAM_START_S) -> dict[str, Any]:
        """Poll ``GET /health`` until it answers; raises RuntimeError if the child exits or time runs out."""
        url = f"http://127.0.0.1:{self.port}/health"
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.proc.poll()
            if status is not None:
                raise RuntimeError(f"the replay upstream exited with status {status} at start (its error is above)")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback, our own child
                    health: dict[str, Any] = json.loads(resp.read())
                    return health
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replay upstream did not answer {url} within {timeout_s:.0f} s")
            time.sleep(0.05)

    def watch(self, on_death: Callable[[], None]) -> None:
        """Call ``on_death()`` from a daemon thread if the child exits before ``stop()``."""

        def run() -> None:
            status = self.proc.wait()
            if not self.stopping.is_set():
                self.died.set()
                log.error("the replay upstream (pid %d) exited with status %s; stopping the gateway",
                          self.proc.pid, status)
                on_death()

        threading.Thread(target=run, name="upstream-watchdog", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Native thread pools of a serving process: one thread each unless the operator says otherwise.
SERVING_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_native_thread(env: MutableMapping[str, str]) -> None:
    """Default the BLAS/OpenMP pools to one thread, before numpy, faiss or torch load and read these.

    The gateway ranks one prompt at a time: the router's similarity pass is a (1, D) x (D, R) product,
    ~0.1 ms of CPU on one thread. OpenBLAS's default, one thread per core, wakes its pool for every
    such product and spins it: served over HTTP on a 2-core machine, a gateway ranking MMLU-Pro's 31
    models over 7,902 probe prompts used 3.7-6.1 ms of CPU per request with two threads and 1.4-1.6 ms
    with one (docs/BENCHMARKS.md). Concurrency comes from the event loop, not from inside one product.
    An operator's own value wins, and one of the three set alone sets the others: OpenBLAS reads
    OPENBLAS_NUM_THREADS before OMP_NUM_THREADS, so a default for it would override an operator's
    OMP_NUM_THREADS. The Dockerfile and the Kubernetes manifest set the same."""
    chosen = next((env[var] for var in SERVING_THREADS if env.get(var)), "1")
    for var in SERVING_THREADS:
        if not env.get(var):
            env[var] = chosen


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    one_native_thread(os.environ)  # before anything imports numpy; --workers children inherit it
    setup_logging(args.log_level, args.log_format, args.access_log)
    # Worker processes (--workers N) set up their own logging the same way (app_factory).
    os.environ["CSCR_LOG_LEVEL"], os.environ["CSCR_LOG_FORMAT"] = args.log_level, args.log_format
    os.environ["CSCR_ACCESS_LOG"] = "1" if args.access_log else "0"
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    upstream = Upstream.start(args.with_upstream, args.log_level) if args.with_upstream is not None else None
    serving = threading.Event()

    def on_stop_signal(signum: int, frame: Any) -> None:
        # uvicorn stops gracefully on SIGTERM / SIGINT, then re-raises the signal to the handler it
        # found (this one): after serving, return so the upstream is stopped below and the exit status
        # is 0 (no KeyboardInterrupt traceback on Ctrl-C); before, unwind to the same place.
        if not serving.is_set():
            raise SystemExit(128 + signum)

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, on_stop_signal)
    try:
        return _serve(args, upstream, serving)
    finally:
        if upstream is not None:
            upstream.stop()


def _serve(args: argparse.Namespace, upstream: Upstream | None, serving: threading.Event) -> int:
    """Load the config (while the upstream starts), wait for the upstream, then serve."""
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
    if upstream is not None:
        try:
            health = upstream.wait_healthy()
        except RuntimeError as exc:
            print(f"cscr serve: {exc}", file=sys.stderr)
            return 1
        log.info("replay upstream ready on http://127.0.0.1:%d/v1 (pid %d, %s RouterBench prompts)",
                 upstream.port, upstream.proc.pid, health.get("prompts"))
    if args.workers > 1 and config.store.startswith("memory://"):
        print("cscr serve: warning: --workers > 1 with a memory:// store gives each worker its own budgets; "
              "use a redis:// store to share them", file=sys.stderr)
    # json: uvicorn's own lines go through the same handler (log_config=None: uvicorn adds none).
    log_kw: dict[str, Any] = {"log_config": None} if args.log_format == "json" else {}
    if args.workers > 1:
        # Workers are separate processes: each builds its app from the config path. The supervisor
        # stops them all on SIGTERM, which is how the watchdog stops it.
        os.environ["CSCR_CONFIG"] = str(args.config)
        if upstream is not None:
            upstream.watch(lambda: os.kill(os.getpid(), signal.SIGTERM))
        serving.set()
        uvicorn.run("gateway.serve:app_factory", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level, access_log=False, **log_kw,
                    timeout_graceful_shutdown=args.graceful_timeout)
    else:
        app = create_app(config, config_path=args.config, config_text=text)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                               access_log=False, timeout_graceful_shutdown=args.graceful_timeout,
                                               **log_kw))
        if upstream is not None:
            upstream.watch(lambda: setattr(server, "should_exit", True))
        serving.set()
        server.run()
        if not server.started and (upstream is None or not upstream.died.is_set()):
            return 3  # uvicorn's startup failure status (port taken, lifespan error); it logged why
    if upstream is not None and upstream.died.is_set():
        print("cscr serve: stopped because the replay upstream died (see above)", file=sys.stderr)
        return 1
    return 0


def app_factory() -> Any:
    """Per-worker app for ``--workers N`` (uvicorn imports this by name in each worker process)."""
    from gateway.app import create_app
    from gateway.config import parse_config_text, read_config_text

    setup_logging(os.environ.get("CSCR_LOG_LEVEL", "info"), os.environ.get("CSCR_LOG_FORMAT", "text"),
                  os.environ.get("CSCR_ACCESS_LOG", "1") == "1")
    path = os.environ["CSCR_CONFIG"]
    text = read_config_text(path)
    return create_app(parse_config_text(text, path), config_path=path, config_text=text)

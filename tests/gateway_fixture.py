"""Start a real gateway (uvicorn, real sockets) in a background thread, for integration tests."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.config import parse_config, parse_config_text
from router_core.types import RoutingPolicy


def start_gateway(raw_config: dict[str, Any] | Path, router: RoutingPolicy | None = None,
                  env: dict[str, str] | None = None) -> tuple[str, Callable[[], None]]:
    """Serve ``raw_config`` (a gateway.yaml document as a dict, or a path to one, which is then
    watched for live reload) on a free port. Returns (``http://127.0.0.1:PORT``, ``stop``)."""
    if isinstance(raw_config, Path):
        text = raw_config.read_text()
        config = parse_config_text(text, str(raw_config), env or {})
        app = create_app(config, router, config_path=raw_config, config_text=text, env=env or {})
    else:
        app = create_app(parse_config(raw_config, "test-config.yaml", env or {}), router)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway failed to start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def provider(name: str, model: str, api_base: str, price: tuple[float, float] = (1.0, 1.0),
             **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": model, "api_base": api_base, "input_usd_per_mtok": price[0],
            "output_usd_per_mtok": price[1], **extra}


def fresh_rate_window(needed_s: float = 20.0, window_s: int = 60) -> None:
    """Wait, if need be, until the current rate-limit window has ``needed_s`` left. The store's
    per-minute windows are fixed and aligned to the epoch (``Store.hit``), so requests that must
    land in one window (to see a limit refuse the next one) fail when they straddle a boundary."""
    left = window_s - time.time() % window_s
    if left < needed_s:
        time.sleep(left + 0.05)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """Terminate every process, then wait for each (killing the ones that do not stop)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

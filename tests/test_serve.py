"""``cscr serve --with-upstream``, as a real process: it listens only once its replay upstream
answers, answers a chat with a recorded answer, and exits non-zero when the upstream dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from gateway.replay import BUNDLED_REPLAY
from tests.redis_fixture import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[object]:
    """Start ``cscr serve`` on the repository's gateway.yaml with its providers on a free upstream
    port; returns (process, gateway port, upstream port). Stopped at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int, int]:
        port, up = free_port(), free_port()
        config = tmp_path / "gateway.yaml"
        config.write_text((ROOT / "gateway.yaml").read_text().replace("127.0.0.1:8100", f"127.0.0.1:{up}"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
             "--with-upstream", str(up)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        procs.append(proc)
        return proc, port, up

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def _wait_listening(proc: subprocess.Popen[str], port: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("gateway did not listen")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_listens_after_its_upstream_and_answers_with_a_recorded_answer(launch) -> None:  # type: ignore[no-untyped-def]
    proc, port, up = launch()
    _wait_listening(proc, port)
    # the moment the gateway listens, its upstream already answers (it used to lag by seconds)
    assert httpx.get(f"http://127.0.0.1:{up}/health", timeout=5).json()["prompts"] == 3176
    row = pd.read_parquet(BUNDLED_REPLAY).iloc[0]
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                   json={"model": "auto", "messages": [{"role": "user", "content": row.prompt_text}]})
    assert r.status_code == 200, r.text
    model = next(p["model"] for p in _providers() if p["name"] == r.headers["x-cscr-provider"])
    from gateway.replay import ReplayTable

    recorded = ReplayTable.load(BUNDLED_REPLAY).lookup(row.prompt_text, model.removeprefix("openai/"))
    assert recorded is not None and r.json()["choices"][0]["message"]["content"] == recorded.content
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # the upstream child went with it
        httpx.get(f"http://127.0.0.1:{up}/health", timeout=2)


def test_exits_non_zero_when_the_upstream_dies_later(launch) -> None:  # type: ignore[no-untyped-def]
    proc, port, _ = launch()
    _wait_listening(proc, port)
    (child,) = _children(proc.pid)
    os.kill(child, signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    out = proc.stdout.read() if proc.stdout else ""
    assert "replay upstream" in out and "exited with status -9" in out


def test_exits_non_zero_when_the_upstream_cannot_start(launch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, port, _ = launch({"CSCR_DATA_DIR": str(tmp_path / "no-data")})  # a chosen folder without the data
    assert proc.wait(timeout=120) == 1
    out = proc.stdout.read() if proc.stdout else ""
    assert "RouterBench subset not found" in out and "replay upstream exited with status 2 at start" in out
    with pytest.raises(httpx.TransportError):  # it never listened
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def _providers() -> list[dict[str, str]]:
    import yaml

    providers: list[dict[str, str]] = yaml.safe_load((ROOT / "gateway.yaml").read_text())["providers"]
    return providers


_POOLS = ("import json, os; from gateway.serve import one_native_thread; one_native_thread(os.environ); "
          "import numpy; from threadpoolctl import threadpool_info; "
          "print(json.dumps(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'})))")


@pytest.mark.parametrize(("var", "preset", "expected"), [(None, None, [1]), ("OPENBLAS_NUM_THREADS", "2", [2]),
                                                         ("OMP_NUM_THREADS", "2", [2])])
def test_serving_uses_one_blas_thread_unless_the_operator_says(var: str | None, preset: str | None,
                                                               expected: list[int]) -> None:
    """The router's one-row similarity product cost 6-8x the CPU per request with OpenBLAS's default
    of a thread per core (docs/BENCHMARKS.md). ``cscr serve`` defaults the pools to one thread before
    numpy loads; an operator's OMP_NUM_THREADS / OPENBLAS_NUM_THREADS still wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS")}
    if var is not None and preset is not None:  # OMP_NUM_THREADS alone: OpenBLAS must not get a 1 of ours
        env[var] = preset
    out = subprocess.run([sys.executable, "-c", _POOLS], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    assert json.loads(out.stdout) == expected


def test_numpy_is_not_loaded_before_serve_sets_its_threads() -> None:
    """OpenBLAS reads its thread count once, when numpy loads: ``cscr serve`` must get there first."""
    code = ("import sys; from gateway import cli, serve; serve.parse_args(['--port', '1']); "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"

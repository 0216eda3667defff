"""A descriptor job outlives nothing: the gateway runs it as a child (``gateway.describe``) with
``CSCR_EXIT_WITH_PARENT`` set, and a gateway killed outright (SIGKILL, the OOM killer) must not leave
it probing a paid provider. Real processes: a parent that starts the job's watchdog in a child, then
dies by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the parent starts a child that arms the watchdog as `cscr describe` does, prints its pid, and sleeps
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", CHILD], env=ENV)
print(child.pid, flush=True)
child.wait()
"""
CHILD = """
import time
from descriptors.cli import exit_with_parent
exit_with_parent(poll_s=0.1)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_descriptor_job_exits_when_its_gateway_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CSCR_EXIT_WITH_PARENT": "1"}
    code = f"CHILD = {CHILD!r}\nENV = {env!r}\n" + PARENT
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child has imported and armed its watchdog
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not _alive(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the descriptor job outlived its killed parent"

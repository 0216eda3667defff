"""A descriptor job outlives nothing: the gateway runs it as a child (``gateway.describe``) with its
own pid in ``CSCR_EXIT_WITH_PARENT``, and a gateway killed outright (SIGKILL, the OOM killer) must
not leave it probing a paid provider. Real processes: a parent that starts a child which arms the
watchdog as ``cscr describe`` does, then dies by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the parent starts the job with its own pid in the variable (as gateway.describe does), prints the
# job's pid, and waits
PARENT = """
import os, subprocess, sys
env = dict(ENV, CSCR_EXIT_WITH_PARENT=str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c", CHILD], env=env)
print(child.pid, flush=True)
child.wait()
"""
# the job: ARM_AFTER seconds of start-up (imports), then the watchdog exactly as descriptors.cli.main
# arms it, then a long sleep standing in for the probing
CHILD = """
import time
time.sleep(ARM_AFTER)
from descriptors.cli import arm_exit_with_parent
arm_exit_with_parent(poll_s=0.1)
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


@pytest.mark.parametrize(("arm_after", "kill_after"), [(0.0, 1.5), (1.5, 0.2)],
                         ids=["killed-while-probing", "killed-before-the-job-armed"])
def test_a_descriptor_job_exits_when_its_gateway_is_killed(arm_after: float, kill_after: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child_code = CHILD.replace("ARM_AFTER", repr(arm_after))
    code = f"CHILD = {child_code!r}\nENV = {env!r}\n" + PARENT
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(kill_after)
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60  # imports and the watchdog's poll, on a machine that may be busy
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    gone = not _alive(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the descriptor job outlived its killed parent"

"""Whether a runner's process is still alive on this host: what lets a resume after
``kill -9`` take the dead runner's ranges at once instead of waiting for their leases."""

from __future__ import annotations

import os
import subprocess
import sys

from cryptopi_batch.control import process_exists as _process_exists


def test_a_running_process_exists() -> None:
    assert _process_exists(os.getpid())
    assert _process_exists(1)  # init: alive, and perhaps another user's (EPERM)


def test_a_process_that_ended_and_was_reaped_does_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not _process_exists(child.pid)

"""Fault injection for the crash-safety tests: DAREX_TEST_KILL_AFTER=N makes the process SIGKILL
itself after writing N tensors, which is how the tests check that a kill leaves no partial
output; DAREX_TEST_SLEEP_PER_TENSOR=S slows each tensor by S seconds, so a test can interrupt a
job half way. Unset (always, outside the tests) they cost two dict lookups per tensor."""

from __future__ import annotations

import os
import signal
import time

_written = 0


def tensor_written() -> None:
    global _written
    pause = os.environ.get("DAREX_TEST_SLEEP_PER_TENSOR")
    if pause is not None:
        time.sleep(float(pause))
    limit = os.environ.get("DAREX_TEST_KILL_AFTER")
    if limit is None:
        return
    _written += 1
    if _written >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)

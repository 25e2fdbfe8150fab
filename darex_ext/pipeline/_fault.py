"""Fault injection for the crash-safety tests: DAREX_TEST_KILL_AFTER=N makes the process SIGKILL
itself after writing N tensors, which is how the tests check that a kill leaves no partial
output. Unset (always, outside the tests) it costs one dict lookup per tensor."""

from __future__ import annotations

import os
import signal

_written = 0


def tensor_written() -> None:
    global _written
    limit = os.environ.get("DAREX_TEST_KILL_AFTER")
    if limit is None:
        return
    _written += 1
    if _written >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)

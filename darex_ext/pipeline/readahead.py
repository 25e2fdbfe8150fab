"""Read the next tensors on a thread while the current ones are computed.

Positional reads (`os.preadv`) and the kernels release the GIL, so one reader thread overlaps
the disk with the arithmetic. Reads go into reusable buffers (`ReadBuffer`): a fresh
tensor-sized allocation per read costs a page fault per 4 KiB, more than the read itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .checkpoint import ReadBuffer

__all__ = ["ReadAhead"]

Reader = Callable[[str, tuple[ReadBuffer, ReadBuffer]], Any]


class ReadAhead:
    """`get(name)` returns `read(name, buffers)`, the next name in `order` already being read.

    Buffer lifetime: the k-th `get` reads into buffer set k % sets, and the read for the (k+1)-th
    starts as the k-th returns; so the caller may hold at most `sets - 1` results at once (2 sets
    when each result is consumed before the next `get`, 3 when one more is still being written
    by a writer thread). Names asked for out of `order` are read synchronously, after any read
    in flight has finished (never two reads into one buffer).
    """

    def __init__(self, read: Reader, order: Sequence[str], *, sets: int = 2):
        if sets < 2:
            raise ValueError(f"sets must be >= 2, got {sets}")
        self._read = read
        self._order = list(order)
        self._pos = {name: i for i, name in enumerate(self._order)}
        self._sets = [(ReadBuffer(), ReadBuffer()) for _ in range(sets)]
        self._calls = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darex-reader")
        self._ahead: tuple[str, Future] | None = None

    def get(self, name: str) -> Any:
        buffers = self._sets[self._calls % len(self._sets)]
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == name:
            result = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].result()  # let it finish: its buffers may be this call's
            result = self._read(name, buffers)
        self._calls += 1
        nxt = self._pos.get(name, -2) + 1
        if 0 < nxt < len(self._order):
            following = self._order[nxt]
            self._ahead = (following, self._pool.submit(self._read, following,
                                                         self._sets[self._calls % len(self._sets)]))
        return result

    def close(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

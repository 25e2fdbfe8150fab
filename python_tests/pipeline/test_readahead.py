"""ReadAhead: the next read runs on a thread, into the buffer set the next call owns."""

from __future__ import annotations

import threading

import pytest
import torch

from darex_ext.pipeline.readahead import ReadAhead


def _reader(log):
    def read(name, bufs):
        log.append((name, threading.current_thread().name, id(bufs)))
        t = bufs[0].take(8).view(torch.int64)
        t.fill_(int(name))
        return t
    return read


def test_in_order_reads_run_ahead_and_rotate_buffer_sets():
    log = []
    order = [str(i) for i in range(7)]
    with ReadAhead(_reader(log), order, sets=3) as reads:
        held = []
        for name in order:
            got = reads.get(name)
            assert int(got) == int(name)
            held.append(got)
            # The last `sets - 1` results stay intact while the next read is in flight.
            assert [int(x) for x in held[-2:]] == [int(n) for n in order[max(0, len(held) - 2):len(held)]]
    assert [name for name, _, _ in log] == order
    assert log[0][1] == threading.current_thread().name           # nothing ahead of the first call
    assert all(th.startswith("darex-reader") for _, th, _ in log[1:])
    sets = [buf for _, _, buf in log]
    assert sets[:3] == sets[3:6] and len(set(sets[:3])) == 3


def test_out_of_order_and_unknown_names_read_synchronously():
    log = []
    with ReadAhead(_reader(log), ["1", "2", "3"], sets=2) as reads:
        assert int(reads.get("1")) == 1
        assert int(reads.get("3")) == 3      # "2" was read ahead and is dropped
        assert int(reads.get("9")) == 9      # not in the order: no read ahead after it
        assert int(reads.get("2")) == 2
    names = [n for n, _, _ in log]
    assert names[:5] == ["1", "2", "3", "9", "2"]
    assert names[5:] in ([], ["3"])          # the read ahead of "3" may be cancelled by close()


def test_reader_errors_surface_on_get():
    def read(name, bufs):
        if name == "2":
            raise OSError("disk on fire")
        return name

    with ReadAhead(read, ["1", "2"]) as reads:
        assert reads.get("1") == "1"
        with pytest.raises(OSError, match="disk on fire"):
            reads.get("2")


def test_sets_argument_checked():
    with pytest.raises(ValueError, match="sets"):
        ReadAhead(lambda n, b: n, [], sets=1)

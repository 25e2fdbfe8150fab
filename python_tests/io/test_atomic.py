"""Atomic writers: the target is the old content or the complete new one, never a part."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from darex_ext.io.atomic import atomic_dir, atomic_file


def _siblings(path):
    return sorted(os.listdir(os.path.dirname(path)))


def test_atomic_file_replaces(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_file(target) as tmp:
        assert tmp != str(target)
        with open(tmp, "wb") as f:
            f.write(b"new content")
        assert target.read_bytes() == b"old"  # not visible before the block ends
    assert target.read_bytes() == b"new content"
    assert _siblings(target) == ["out.bin"]


def test_atomic_file_error_keeps_old_and_cleans_up(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _siblings(target) == ["out.bin"]


def test_atomic_file_error_leaves_no_new_file(tmp_path):
    target = tmp_path / "sub" / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as tmp:
            open(tmp, "wb").write(b"x")
            raise KeyboardInterrupt
    assert not target.exists()
    assert os.listdir(tmp_path / "sub") == []


def test_atomic_file_killed_writer_leaves_no_partial_target(tmp_path):
    target = tmp_path / "killed.bin"
    code = textwrap.dedent(f"""
        import os, sys
        from darex_ext.io.atomic import atomic_file
        with atomic_file({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
                f.flush()
            os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not target.exists()
    # Only the hidden temporary may remain; it never has the target's name.
    assert all(name.startswith(".killed.bin.tmp-") for name in os.listdir(tmp_path))


def test_atomic_dir_creates_and_refuses_existing(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "b.txt"), "w").write("b")
    assert sorted(os.listdir(out)) == ["b.txt"]
    assert _siblings(out) == ["model"]


def test_atomic_dir_error_removes_temporary(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("a")
            raise ValueError("mismatch")
    assert not out.exists()
    assert os.listdir(tmp_path) == []

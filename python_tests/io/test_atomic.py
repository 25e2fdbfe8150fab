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


# ---- one publisher, atomic replace, umask, leftovers of killed writers
import darex_ext.io.atomic as atomic  # noqa: E402


@pytest.mark.parametrize("native", [True, False], ids=["renameat2", "fallback"])
def test_publish_never_replaces_an_output_that_appeared(tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.setattr(atomic, "_renameat2", lambda src, dst, flags: False)
    out = tmp_path / "model"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(out) as tmp:
            open(os.path.join(tmp, "mine.txt"), "w").write("mine")
            os.mkdir(out)  # another writer published first
            open(out / "theirs.txt", "w").write("theirs")
    assert os.listdir(out) == ["theirs.txt"]
    assert _siblings(out) == ["model"]


@pytest.mark.parametrize("native", [True, False], ids=["exchange", "fallback"])
def test_overwrite_swaps_in_one_step_and_removes_the_old(tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.setattr(atomic, "_renameat2", lambda src, dst, flags: False)
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "new.txt"), "w").write("new")
        assert (out / "old.txt").exists()
    assert os.listdir(out) == ["new.txt"]
    assert _siblings(out) == ["model"]


_HOLD = textwrap.dedent("""
    import sys, time
    from darex_ext.io.atomic import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        print("holding", flush=True)
        time.sleep(30)
""")


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path):
    out = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(atomic.OutputLocked, match="being written by another process"):
            with atomic_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its temporary is stale and the next writer removes it.
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("a")
    assert os.listdir(tmp_path) == ["model"]  # its lock file is reused and removed too


def test_stale_siblings_are_removed_only_when_their_writer_is_gone(tmp_path):
    code = textwrap.dedent("""
        import os, sys
        from darex_ext.io.atomic import atomic_dir, atomic_file
        with atomic_file(os.path.join(sys.argv[1], "f.bin")) as tmp:
            with atomic_dir(os.path.join(sys.argv[1], "d")) as tmpdir:
                os.kill(os.getpid(), 9)
    """)
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == -9
    left = sorted(os.listdir(tmp_path))
    assert any(e.startswith(".f.bin.tmp-") for e in left) and any(e.startswith(".d.tmp-") for e in left)
    # A sibling of a live writer (this process) is kept.
    live = tmp_path / f".x.tmp-{atomic._owner_tag()}"
    live.mkdir()
    removed = atomic.remove_stale(str(tmp_path))
    assert sorted(removed) == sorted(e for e in left if ".tmp-" in e)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name] + [e for e in left if ".tmp-" not in e])


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            pass
        with atomic_file(tmp_path / "f.bin") as tmp:
            open(tmp, "wb").write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask

"""Publishing is honest: exit 0 if and only if the complete output was published. Concurrent
writers of one output (one wins, the other exits 1 and leaves nothing), a worker that dies, an
interrupted or killed parent (nothing published, no worker left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline_models import dir_bytes, llama_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pub"))
    base, (ft,) = llama_pair(root, shard="20KB")
    return base, ft


def _darex(*args, env=None, **kw):
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "darex_ext", *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _hidden(parent, name="out"):
    return [e for e in os.listdir(parent) if e.startswith(f".{name}")]


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_concurrent_prunes_into_one_output(models, tmp_path):
    base, ft = models
    out = str(tmp_path / "out")
    args = ["prune", base, ft, "-o", out, "-p", "0.9", "--quiet"]
    slow = {"DAREX_TEST_SLEEP_PER_TENSOR": "0.02"}
    a, b = _darex(*args, "--seed", "1", env=slow), _darex(*args, "--seed", "2", env=slow)
    (_, err_a), (_, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 1], (err_a, err_b)
    loser = err_a if a.returncode else err_b
    assert len(loser.strip().splitlines()) == 1 and ("already exists" in loser or "being written" in loser)
    winner_seed = "1" if a.returncode == 0 else "2"
    subprocess.run([sys.executable, "-m", "darex_ext", *args[:-1], "-o", str(tmp_path / "again"), "--seed", winner_seed],
                   check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), capture_output=True)
    assert dir_bytes(out) == dir_bytes(str(tmp_path / "again"))
    assert _hidden(tmp_path) == []


def test_a_worker_that_dies_publishes_nothing(models, tmp_path):
    base, ft = models
    proc = _darex("prune", base, ft, "-o", str(tmp_path / "out"), "--workers", "2", "--quiet",
                  env={"DAREX_TEST_KILL_AFTER": "2"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert not (tmp_path / "out").exists() and _hidden(tmp_path) == []


def _start_and_wait_for_staging(models, tmp_path):
    base, ft = models
    proc = _darex("prune", base, ft, "-o", str(tmp_path / "out"), "--workers", "2", "--quiet",
                  env={"DAREX_TEST_SLEEP_PER_TENSOR": "0.5"})
    deadline = time.monotonic() + 120
    while not [e for e in _hidden(tmp_path) if ".tmp-" in e]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(3.0)  # the workers are writing
    kids = _children(proc.pid)
    assert kids, "no worker processes"
    return proc, kids


def test_interrupted_parent_publishes_nothing(models, tmp_path):
    proc, kids = _start_and_wait_for_staging(models, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    time.sleep(2.0)
    assert not (tmp_path / "out").exists() and not [e for e in _hidden(tmp_path) if ".tmp-" in e]
    assert not [k for k in kids if _alive(k)]


def test_killed_parent_leaves_no_worker_and_no_output(models, tmp_path):
    proc, kids = _start_and_wait_for_staging(models, tmp_path)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while [k for k in kids if _alive(k)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "orphan workers"
    time.sleep(2.0)
    assert not (tmp_path / "out").exists()

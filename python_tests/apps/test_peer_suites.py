"""scripts/peer_suites.sh without its downloads: the dry-run plan, the pytest plugin that installs
darex into a peer's test run, and the comparison that finds regressions."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "peer_suites.sh"
HELPERS = ROOT / "scripts" / "peer_suites"
HAVE_PEERS = all(importlib.util.find_spec(m) is not None for m in ("mergekit", "peft"))


def _script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PEER_PYTHON": sys.executable, **env})


@pytest.mark.skipif(not HAVE_PEERS, reason="needs mergekit and peft")
def test_dry_run_plans_both_suites_twice():
    done = _script("--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for suite in ("mergekit", "peft"):
        version = importlib.metadata.version(suite)
        assert f"pip download --no-binary :all: --no-deps {suite}=={version}" in out
        assert f"stock: DAREX_PEER_INSTALL= {sys.executable} -m pytest" in out
        assert f"darex: DAREX_PEER_INSTALL={suite} {sys.executable} -m pytest" in out
    assert "tests/test_sparsify.py" in out and "-k weighted_adapter" in out
    assert out.rstrip().endswith("dry run: nothing fetched, nothing run")


def test_bad_arguments_and_environment():
    assert _script("--now").returncode == 2
    done = _script("--dry-run", PEER_SUITES="mergekit lora")
    assert done.returncode == 2 and "unknown suite lora" in done.stderr
    done = _script("--dry-run", PEER_PYTHON="/bin/false")
    assert done.returncode == 2 and "not installed" in done.stderr


@pytest.mark.skipif(not HAVE_PEERS, reason="needs mergekit and peft")
@pytest.mark.parametrize("target, check", [
    ("mergekit", "import mergekit.sparsify as m, darex_ext.integrations.mergekit as d; "
                 "assert m.sparsify is d.sparsify"),
    ("peft", "import peft.utils.merge_utils as m, darex_ext.integrations.peft as d; assert m.ties is d.ties"),
    ("", "import mergekit.sparsify as m, darex_ext.integrations.mergekit as d; assert m.sparsify is not d.sparsify"),
])
def test_plugin_installs_darex_before_collection(tmp_path, target, check):
    (tmp_path / "darex_peer_plugin.py").write_text((HELPERS / "plugin.py").read_text())
    (tmp_path / "test_peer.py").write_text(f"{check.split(';')[0]}\n\ndef test_installed():\n    {check.split(';')[1].strip()}\n")
    env = dict(os.environ, DAREX_PEER_INSTALL=target, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "darex_peer_plugin", "-p", "no:cacheprovider",
                           str(tmp_path / "test_peer.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"darex drop-ins: {target or 'none (stock)'}" in done.stdout


def _junit(path: Path, cases: dict[str, str]) -> str:
    body = []
    for name, kind in cases.items():
        inner = {"passed": "", "failed": '<failure message="assert 1 == 2&#10;more">x</failure>',
                 "error": '<error message="boom">x</error>', "skipped": '<skipped message="skip"/>'}[kind]
        body.append(f'<testcase classname="tests.t" name="{name}">{inner}</testcase>')
    path.write_text(f'<testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>')
    return str(path)


def _compare(tmp_path, stock: dict, darex: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPERS / "compare.py"), "suite", _junit(tmp_path / "s.xml", stock),
                           _junit(tmp_path / "d.xml", darex), "3s", "4s"], capture_output=True, text=True, timeout=60)


def test_compare_counts_and_finds_regressions(tmp_path):
    stock = {"a": "passed", "b": "passed", "c": "passed", "s": "skipped", "f": "failed"}
    done = _compare(tmp_path, stock, {"a": "passed", "b": "failed", "c": "error", "s": "skipped", "f": "passed",
                                      "x": "passed"})
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["suite", "stock", "3", "1", "0", "1", "5", "3s"]
    assert lines[1].split() == ["suite", "darex", "3", "1", "1", "1", "6", "4s"]
    assert "suite: 1/3 of the tests that pass stock pass with darex" in done.stdout
    assert "REGRESSION tests.t::b: failed: assert 1 == 2" in done.stdout
    assert "REGRESSION tests.t::c: error: boom" in done.stdout
    assert "1 tests only in the darex run" in done.stdout and "1 passed, 0 failed" in done.stdout


def test_compare_passes_only_without_regressions(tmp_path):
    stock = {"a": "passed", "f": "failed"}
    assert _compare(tmp_path, stock, {"a": "passed", "f": "failed"}).returncode == 0
    # A test that exists only with darex (a darex_* method in a registry-wide test) must pass too.
    done = _compare(tmp_path, stock, {"a": "passed", "f": "failed", "darex_x": "failed"})
    assert done.returncode == 1 and "FAILED (darex only) tests.t::darex_x" in done.stdout
    done = _compare(tmp_path, stock, {"f": "failed"})
    assert done.returncode == 1 and "REGRESSION tests.t::a: missing" in done.stdout

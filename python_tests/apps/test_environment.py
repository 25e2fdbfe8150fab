"""The environment the README's commands run in: every console script in it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

IN_VENV = sys.prefix != sys.base_prefix


@pytest.mark.skipif(not IN_VENV, reason="not running inside a virtual environment")
def test_every_console_script_points_at_an_existing_interpreter():
    bad = []
    for script in sorted(Path(sys.prefix, "bin").iterdir()):
        if not script.is_file():
            continue
        with open(script, "rb") as f:
            first = f.readline()
        if first.startswith(b"#!"):
            interpreter = first[2:].split()[0].decode()
            if not os.access(interpreter, os.X_OK):
                bad.append(f"{script.name}: {interpreter}")
    assert not bad, bad


@pytest.mark.skipif(not IN_VENV, reason="not running inside a virtual environment")
@pytest.mark.parametrize("command", [["pytest", "--version"], ["pip", "--version"], ["mergekit-yaml", "--help"]])
def test_console_scripts_run(command):
    done = subprocess.run([str(Path(sys.prefix, "bin", command[0])), *command[1:]], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

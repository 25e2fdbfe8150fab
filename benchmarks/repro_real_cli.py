"""Runs `python -m darex_ext` (the `darex` command) as a subprocess for benchmarks/repro_real.py.

Every pruned model of the benchmark is made by the command line a user would type, so the
table measures the CLI, not a library call that could differ from it. A usage error (exit 2:
an option this checkout's CLI does not have yet) is told apart from a failure (exit 1), so a
method whose options have not landed is reported as missing instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["CliError", "CliMissing", "CliRun", "Cli"]


class CliError(RuntimeError):
    """The command failed (exit 1 or a crash); the message is its last stderr line."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str):
        self.argv, self.code, self.stderr = list(argv), code, stderr
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        self.reason = lines[-1].strip() if lines else f"exit code {code}"
        super().__init__(f"`{shlex.join(self.argv)}` exited with {code}: {self.reason}")


class CliMissing(CliError):
    """The CLI refused the command line (argparse usage error, exit 2): an option it lacks."""


@dataclass
class CliRun:
    argv: list[str]
    seconds: float
    stdout: str
    stderr: str

    @property
    def command(self) -> str:
        """As a user types it: `darex prune ...`."""
        return shlex.join(["darex", *self.argv[3:]])

    @property
    def notes(self) -> list[str]:
        """The `note: ...` lines the command printed (e.g. the q it chose)."""
        return [ln.strip()[len("note:"):].strip() for ln in (self.stdout + "\n" + self.stderr).splitlines()
                if ln.strip().startswith("note:")]


@dataclass
class Cli:
    """`python -m darex_ext ...` with this interpreter; every call is recorded in `log`.

    in_process=True calls the same entry point (`darex_ext.apps.cli.main`) in this process
    instead: the same argument parsing and handlers without a fresh interpreter per command
    (the tests' shortcut; the benchmark runs real subprocesses).
    """

    python: str = sys.executable
    env: dict[str, str] | None = None
    in_process: bool = False
    log: list[CliRun] = field(default_factory=list)

    def _call(self, args: Sequence[str]) -> tuple[int, str, str]:
        if not self.in_process:
            proc = subprocess.run([self.python, "-m", "darex_ext", *args], capture_output=True, text=True,
                                  env=self._env())
            return proc.returncode, proc.stdout, proc.stderr
        from darex_ext.apps.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args), prog="python -m darex_ext")
            except SystemExit as exc:  # argparse: 2 on a usage error
                code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def run(self, *args: str) -> CliRun:
        argv = [self.python, "-m", "darex_ext", *args]
        t0 = time.perf_counter()
        code, stdout, stderr = self._call(args)
        run = CliRun(argv, time.perf_counter() - t0, stdout, stderr)
        self.log.append(run)
        if code == 2:
            raise CliMissing(argv, code, stderr)
        if code != 0:
            raise CliError(argv, code, stderr)
        return run

    def help(self, *command: str) -> str:
        proc = subprocess.run([self.python, "-m", "darex_ext", *command, "--help"], capture_output=True, text=True,
                              env=self._env())
        return proc.stdout

    def commands(self) -> list[str]:
        """The subcommands `darex --help` lists."""
        text = self.help()
        start = text.find("{")
        end = text.find("}", start)
        return text[start + 1:end].split(",") if start >= 0 and end > start else []

    def prune(self, base: str, finetuned: str, out: str, *options: str) -> CliRun:
        return self.run("prune", base, finetuned, "-o", out, "--overwrite", "--quiet", *options)

    def apply(self, base: str, delta: str, out: str) -> CliRun:
        return self.run("apply", base, delta, "-o", out, "--overwrite", "--quiet")

    def calibrate(self, model: str, text: str, out: str, *options: str) -> CliRun:
        return self.run("calibrate", model, "--text", text, "-o", out, *options)

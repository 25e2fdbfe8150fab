"""The `darex` command: `darex bench | version | prune | apply | merge | inspect | demo`.

Exit codes: 0 success, 2 usage error (argparse), 1 failure with a one-line reason on stderr
(`--traceback` shows the full traceback instead).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import MODEL_COMMANDS, add_model_commands

__all__ = ["build_parser", "main"]

# Subcommands whose own module parses the rest of the command line (their `main(argv)`).
_FORWARDING = ("bench",)


def build_parser(prog: str = "darex") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Fast, exact delta-parameter pruning (DARE, DAREx) for PyTorch models.")
    parser.add_argument("--traceback", action="store_true", help="on failure, show the full traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # add_help=False: `darex bench --help` reaches the benchmark's own parser.
    sub.add_parser("bench", add_help=False,
                   help="benchmark fused prune_/dare against the PyTorch way (see `darex bench --help`)")
    sub.add_parser("version", help="print the version and how the extension was built")
    add_model_commands(sub)
    return parser


def _bench(rest: list[str], prog: str) -> int:
    from . import bench

    return bench.main(rest, prog=f"{prog} bench", default_device="auto")


def _version(rest: list[str], prog: str) -> int:
    import torch

    import darex_ext

    print(f"darex_ext {darex_ext.__version__}")
    for key, value in darex_ext.build_info().items():
        print(f"  {key}: {value}")
    print(f"  runtime torch: {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    return 0


_COMMANDS = {"bench": _bench, "version": _version}


def main(argv: Sequence[str] | None = None, *, prog: str = "darex") -> int:
    parser = build_parser(prog)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in _FORWARDING:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command in MODEL_COMMANDS:
            return MODEL_COMMANDS[args.command](args, args.subparser)
        return _COMMANDS[args.command](rest, prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (the CLI's contract: one line, exit code 1)
        if args.traceback:
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        # The library names its keyword; on the command line the flag is what to pass.
        reason = reason.replace("(pass overwrite=True to replace it)", "(pass --overwrite to replace it)")
        print(f"{prog} {args.command}: error: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1

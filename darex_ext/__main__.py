"""`python -m darex_ext ...` is the `darex` command."""

from __future__ import annotations

import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m darex_ext"))

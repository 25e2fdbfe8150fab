"""`darex-mergekit`: mergekit's `mergekit-yaml` with darex's merge methods registered.

    darex-mergekit cfg.yml out/            # same arguments and options as mergekit-yaml
    # cfg.yml: merge_method: darex_dare_ties (or any darex_* method, or mergekit's own)

mergekit 0.1.5 has no plugin hook for third-party merge methods: its registry
(mergekit/merge_methods/registry.py in arcee-ai/mergekit) is a module-level dict filled when the
module is imported, `mergekit-yaml` (mergekit/scripts/run_yaml.py) builds the plan straight from
it, and mergekit declares no entry-point group that it loads. A YAML naming `darex_*` therefore
fails under plain `mergekit-yaml` with "Unimplemented merge method". This console script
registers darex's methods in that registry and then runs mergekit-yaml's own click command, so
every mergekit option (--cuda, --random-seed, --out-shard-size, ...) behaves exactly as there.
mergekit runs its graph in threads of this one process, so registering once here is enough.

Stock methods (ties, dare_ties, ...) stay mergekit's own unless DAREX_MERGEKIT_DROP_INS=1, which
also routes mergekit's sparsification through darex (darex_ext.integrations.mergekit.install).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main", "DROP_INS_ENV"]

DROP_INS_ENV = "DAREX_MERGEKIT_DROP_INS"
_PROG = "darex-mergekit"


def _drop_ins_requested() -> bool:
    value = os.environ.get(DROP_INS_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{DROP_INS_ENV} must be 0 or 1, got {os.environ[DROP_INS_ENV]!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Register the darex_* methods, then run mergekit-yaml with `argv` (default: sys.argv[1:])."""
    try:
        drop_ins = _drop_ins_requested()
        from mergekit.scripts import run_yaml
    except ValueError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"{_PROG}: error: mergekit is not installed ({exc}); "
              "install it with `pip install darex_ext[integrations]`", file=sys.stderr)
        return 1
    from . import mergekit as darex_mergekit

    if drop_ins:
        darex_mergekit.install()  # also registers the methods
    else:
        darex_mergekit.register_methods()
    # Standalone click: exit codes, usage errors and --help exactly as mergekit-yaml's.
    run_yaml.main.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=_PROG)
    return 0  # not reached: click exits


if __name__ == "__main__":
    sys.exit(main())

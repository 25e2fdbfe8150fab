"""pytest plugin for scripts/peer_suites.sh: loaded with `-p darex_peer_plugin` into a peer's own
test run (mergekit's or PEFT's, from its source distribution).

DAREX_PEER_INSTALL=mergekit|peft installs darex's drop-ins into that package before any test
module is imported (pytest_configure runs before collection, so a test's `from mergekit.sparsify
import sparsify` binds darex's function); unset, the run is stock. Either way the header says which.
"""

from __future__ import annotations

import os

_TARGET = os.environ.get("DAREX_PEER_INSTALL", "")


def pytest_configure(config) -> None:
    if _TARGET == "mergekit":
        import mergekit.sparsify

        import darex_ext.integrations.mergekit as dm

        dm.install()
        assert mergekit.sparsify.sparsify is dm.sparsify, "darex's sparsify was not installed"
    elif _TARGET == "peft":
        import peft.utils.merge_utils as mu

        import darex_ext.integrations.peft as dp

        dp.install()
        assert mu.ties is dp.ties, "darex's merge_utils were not installed"
    elif _TARGET:
        raise ValueError(f"DAREX_PEER_INSTALL must be mergekit, peft or empty, got {_TARGET!r}")


def pytest_report_header(config) -> str:
    return f"darex drop-ins: {_TARGET or 'none (stock)'}"

"""Counts of a peer suite's stock and darex runs from their JUnit XML files, and the tests that
pass stock but not with darex, or run only with darex and fail (scripts/peer_suites.sh fails on
either).

    python compare.py SUITE STOCK.xml DAREX.xml [SECONDS_STOCK SECONDS_DAREX]
Prints one row per run and the regressions; exit status 1 when there is one.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

__all__ = ["outcomes", "main"]


def outcomes(path: str) -> dict[str, tuple[str, str]]:
    """test id -> (passed | failed | error | skipped, first line of the failure message)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        found = {child.tag: child for child in case}
        for tag, kind in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
            if tag in found:
                message = (found[tag].get("message") or "").strip().splitlines()
                out[name] = (kind, message[0][:200] if message else "")
                break
        else:
            out[name] = ("passed", "")
    return out


def _row(suite: str, run: str, res: dict[str, tuple[str, str]], seconds: str) -> str:
    counts = [sum(v[0] == k for v in res.values()) for k in ("passed", "failed", "error", "skipped")]
    return f"{suite:<10} {run:<6} " + " ".join(f"{c:>7}" for c in counts) + f" {len(res):>7} {seconds:>8}"


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 5):
        print(__doc__, file=sys.stderr)
        return 2
    suite, stock_xml, darex_xml = argv[:3]
    secs = argv[3:5] or ["-", "-"]
    stock, darex = outcomes(stock_xml), outcomes(darex_xml)
    print(_row(suite, "stock", stock, secs[0]))
    print(_row(suite, "darex", darex, secs[1]))
    passed = {t for t, v in stock.items() if v[0] == "passed"}
    lost = sorted(t for t in passed if darex.get(t, ("missing",))[0] != "passed")
    print(f"{suite}: {len(passed) - len(lost)}/{len(passed)} of the tests that pass stock pass with darex")
    for t in lost:
        kind, message = darex.get(t, ("missing", ""))
        print(f"  REGRESSION {t}: {kind}" + (f": {message}" if message else ""))
    # Tests parametrized over mergekit's registry also run darex's registered darex_* methods.
    extra = sorted(set(darex) - set(stock))
    if extra:
        bad = [t for t in extra if darex[t][0] in ("failed", "error")]
        print(f"{suite}: {len(extra)} tests only in the darex run (e.g. over the darex_* methods): "
              f"{sum(darex[t][0] == 'passed' for t in extra)} passed, {len(bad)} failed")
        for t in bad:
            print(f"  FAILED (darex only) {t}: {darex[t][1]}")
    return 1 if lost or any(darex[t][0] in ("failed", "error") for t in extra) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

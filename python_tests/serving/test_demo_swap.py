"""`darex demo --swap`: the live model switched between the demo's DARE and DAREx-q deltas."""

from __future__ import annotations

import io

import pytest

from darex_ext.apps import cli
from darex_ext.apps.demo import default_task
from darex_ext.apps.demo_swap import run_swap_demo


def test_swap_demo_quick():
    out = io.StringIO()
    result = run_swap_demo(p=0.99, quick=True, switches=6, out=out, task=default_task(quick=True))
    text = out.getvalue()
    assert result["restored"] and result["exact"] == {"DARE": True, "DAREx-q": True}
    assert set(result["accuracy"]) == {"base", "fine-tuned", "DARE", "DAREx-q"}
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    assert len(result["switch_s"]["DARE"]) == 3 and len(result["switch_s"]["DAREx-q"]) == 3
    assert "bit for bit" in text and "base restored bit for bit: yes" in text
    assert 0 < result["memory"]["deltas_total"] < result["memory"]["base"]


def test_swap_flag_parses_and_refuses_keep(capsys):
    args = cli.build_parser().parse_args(["demo", "--swap", "--quick"])
    assert args.swap and args.quick
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--swap", "--keep", "somewhere"])
    assert exc.value.code == 2
    assert "--keep does not apply with --swap" in capsys.readouterr().err

#!/usr/bin/env python
"""atheris fuzz target for `darex apply` on hostile delta directories: a mutated layout
(`darex.layout`) or dense-tensor record (`darex.dense`) must either be refused before anything
is written (FormatError / ValueError / FileNotFoundError, no output left) or rebuild exactly the
tensors `darex prune --format dense` wrote. Anything else, a crash or a wrong model, is a finding.

    python python_tests/fuzz_apply.py -max_total_time=60        # fuzz for 60 s
    python python_tests/fuzz_apply.py -runs=500                 # a fixed number of inputs

Not a pytest module (pytest collects test_*.py only); python_tests/pipeline/test_apply_hostile.py
runs it briefly.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["darex_ext.pipeline", "darex_ext.io"]):
    import torch

    from darex_ext.io.safetensors import encode_header, read_header
    from darex_ext.pipeline import PruneConfig, apply_delta, prune_model
    from pipeline_models import llama_pair, load_all

_TMP = tempfile.mkdtemp(prefix="darex_fuzz_apply_")
_BASE, (_FT,) = llama_pair(os.path.join(_TMP, "m"), layers=1)
_CFG = dict(method="dare", p=0.9, seed=5, preset="decoder")
prune_model(_BASE, _FT, os.path.join(_TMP, "delta"), PruneConfig(format="seeded", **_CFG))
prune_model(_BASE, _FT, os.path.join(_TMP, "dense"), PruneConfig(**_CFG))
_EXPECTED = load_all(os.path.join(_TMP, "dense"))
_DELTA = os.path.join(_TMP, "delta", "delta.safetensors")
_INFOS, _META = read_header(_DELTA)
with open(_DELTA, "rb") as _f:
    _DATA = _f.read()[next(iter(_INFOS.values())).data_start:]


def _json_value(fdp: atheris.FuzzedDataProvider):
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.ConsumeIntInRange(-3, 1 << 20)
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(8)
    if kind == 2:
        return None
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return [_json_value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 2))]
    if kind == 5:
        return {fdp.ConsumeUnicodeNoSurrogates(4): _json_value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 2))}
    return fdp.ConsumeFloat()


def _edit(node, fdp: atheris.FuzzedDataProvider):
    """Replace, duplicate or delete one node of a JSON tree, chosen by the input."""
    parent, key = None, None
    for _ in range(fdp.ConsumeIntInRange(1, 5)):
        if isinstance(node, dict) and node:
            key = sorted(node)[fdp.ConsumeIntInRange(0, len(node) - 1)]
        elif isinstance(node, list) and node:
            key = fdp.ConsumeIntInRange(0, len(node) - 1)
        else:
            break
        parent, node = node, node[key]
    if parent is None:
        return
    op = fdp.ConsumeIntInRange(0, 2)
    if op == 0:
        parent[key] = _json_value(fdp)
    elif op == 1 and isinstance(parent, list):
        parent.append(json.loads(json.dumps(parent[key])))
    else:
        del parent[key]


def TestOneInput(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    meta = dict(_META)
    layout = json.loads(meta["darex.layout"])
    dense = json.loads(meta["darex.dense"])
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        if fdp.ConsumeIntInRange(0, 3):
            _edit(layout, fdp)
        else:
            wrapped = {"d": dense}
            _edit(wrapped, fdp)
            dense = wrapped.get("d")
    meta["darex.layout"] = json.dumps(layout)
    meta["darex.dense"] = json.dumps(dense)
    work = tempfile.mkdtemp(dir=_TMP)
    try:
        shutil.copytree(os.path.join(_TMP, "delta"), os.path.join(work, "d"))
        head, _ = encode_header([(n, i.dtype, i.shape) for n, i in _INFOS.items()], meta)
        with open(os.path.join(work, "d", "delta.safetensors"), "wb") as f:
            f.write(head + _DATA)
        out = os.path.join(work, "out")
        try:
            apply_delta(_BASE, os.path.join(work, "d"), out)
        except (ValueError, FileNotFoundError):  # FormatError and CheckpointMismatch are ValueErrors
            if os.path.exists(out) or [e for e in os.listdir(work) if e.startswith(".out")]:
                raise AssertionError("a refused apply left output behind") from None
            return
        got = load_all(out)
        if got.keys() != _EXPECTED.keys() or not all(torch.equal(got[k], _EXPECTED[k]) for k in _EXPECTED):
            raise AssertionError("apply published a model that differs from --format dense")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

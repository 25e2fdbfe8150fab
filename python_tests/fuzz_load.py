#!/usr/bin/env python
"""atheris fuzz target for darex_ext.storage.load: any input must load and decode, or raise
FormatError; any other exception or a crash is a finding.

    python python_tests/fuzz_load.py -max_total_time=60          # fuzz for 60 s
    python python_tests/fuzz_load.py -runs=100000 corpus_dir/    # keep a corpus

Inputs are mostly turned into mutations (truncation, byte flips, header and index edits) of a
valid file with every format, which reach far deeper than raw bytes; an input starting with
b"RAW:" is used as the file itself. Not a pytest module (pytest collects test_*.py only).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["darex_ext.storage", "safetensors"]):
    import torch

    from darex_ext.storage import FormatError, load, save
    from storage_samples import sample_deltas

_TMP = tempfile.mkdtemp(prefix="darex_fuzz_")
_PATH = os.path.join(_TMP, "input.safetensors")


def _seed_file() -> bytes:
    deltas = sample_deltas((torch.float32, torch.bfloat16, torch.float64))
    path = os.path.join(_TMP, "seed.safetensors")
    save(path, deltas, metadata={"origin": "fuzz"})
    with open(path, "rb") as f:
        return f.read()


SEED = _seed_file()


def _mutate(fdp: atheris.FuzzedDataProvider) -> bytes:
    data = bytearray(SEED)
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        op = fdp.ConsumeIntInRange(0, 4)
        if op == 0 and data:  # flip a byte
            data[fdp.ConsumeIntInRange(0, len(data) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
        elif op == 1:  # truncate
            data = data[:fdp.ConsumeIntInRange(0, len(data))]
        elif op == 2 and len(data) > 8:  # overwrite 8 bytes with an integer
            pos = fdp.ConsumeIntInRange(0, len(data) - 8)
            data[pos:pos + 8] = struct.pack("<q", fdp.ConsumeIntInRange(-(2**63), 2**63 - 1))
        elif op == 3 and len(data) > 8:  # edit one field of the index JSON
            try:
                (n,) = struct.unpack("<Q", data[:8])
                header = json.loads(bytes(data[8:8 + n]))
                index = json.loads(header["__metadata__"]["darex_ext.tensors"])
                name = sorted(index)[fdp.ConsumeIntInRange(0, len(index) - 1)]
                field = ["format", "dtype", "shape", "p", "q", "seed", "offset"][fdp.ConsumeIntInRange(0, 6)]
                index[name][field] = json.loads(fdp.ConsumeUnicodeNoSurrogates(12) or "null")
                header["__metadata__"]["darex_ext.tensors"] = json.dumps(index)
                raw = json.dumps(header).encode()
                raw += b" " * (-len(raw) % 8)
                data = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n:]))
            except Exception:  # the edit itself failed (not JSON): keep the bytes as they are
                pass
        elif op == 4 and data:  # insert random bytes
            pos = fdp.ConsumeIntInRange(0, len(data))
            data[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
    return bytes(data)


def TestOneInput(raw: bytes) -> None:
    data = raw[4:] if raw.startswith(b"RAW:") else _mutate(atheris.FuzzedDataProvider(raw))
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        with load(_PATH) as deltas:
            for name in deltas:
                sd = deltas[name]
                dense = sd.to_dense()
                base = torch.zeros(sd.shape, dtype=sd.dtype)
                sd.add_to_(base)
                if not (torch.equal(base, dense) or bool(torch.isnan(dense).any())):
                    raise AssertionError(f"{name}: add_to_(zeros) != to_dense()")
    except FormatError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""DeltaBank on small modules: bit-exact round trips in every format and dtype (NaN payloads,
-0.0, subnormals in the base), no drift over many switches, refusals that touch nothing, a
failure half way that restores the base, thread safety, argument errors."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from torch import nn

from conftest import DTYPES, randn
from darex_ext.ops import prune_
from darex_ext.serving import DeltaBank, KeptIndex, kept_positions
from darex_ext.serving import bank as bank_mod
from darex_ext.serving import positions as positions_mod
from darex_ext.storage import FormatError, SparseDelta, compress, compress_dare

FORMATS = ("seeded", "bitmask", "csr")
INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# Special bit patterns per dtype: a signalling NaN with payload, a negative quiet NaN with payload,
# -0.0, the smallest subnormal, -inf.
SPECIAL = {
    torch.bfloat16: [0x7F81, -0x003F, -0x8000, 0x0001, -0x0080],
    torch.float16: [0x7C01, -0x01FF, -0x8000, 0x0001, -0x0400],
    torch.float32: [0x7F800001, -0x003FFFFF, -0x80000000, 0x00000001, -0x00800000],
    torch.float64: [0x7FF0000000000001, -0x0007FFFFFFFFFFFF, -0x8000000000000000, 0x1, -0x0010000000000000],
}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().view(INT[t.element_size()]).clone()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: bits(v) for k, v in model.state_dict().items()}


def assert_bits(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(snap)
    for k, v in state.items():
        assert torch.equal(bits(v), snap[k]), f"{k} differs"


class Net(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.w1 = nn.Parameter(randn(24, 37, dtype=dtype))
        self.w3 = nn.Parameter(randn(3, 5, 11, dtype=dtype))
        self.b1 = nn.Parameter(randn(24, dtype=dtype))
        self.norm = nn.Parameter(randn(37, dtype=dtype))  # replaced whole (the dense part)
        self.frozen = nn.Parameter(randn(6, 6, dtype=dtype))  # not in any delta
        self.register_buffer("scale", randn(4, dtype=dtype))


def special_net(dtype) -> Net:
    """Net whose base holds NaNs with payloads, -0.0, subnormals and -inf at every 3rd entry."""
    net = Net(dtype)
    pats = SPECIAL[dtype]
    with torch.no_grad():
        for p in net.state_dict(keep_vars=True).values():
            b = p.detach().view(INT[p.element_size()]).view(-1)
            for j, i in enumerate(range(0, b.numel(), 3)):
                b[i] = pats[j % len(pats)]
    return net


def make_delta(net: Net, fmt: str, p: float, seed: int, *, dense: bool = True) -> dict:
    out = {}
    for i, name in enumerate(("w1", "w3", "b1")):
        t = getattr(net, name)
        d = randn(*t.shape, dtype=t.dtype) * 0.01
        if fmt == "seeded":
            out[name] = compress_dare(d, p, seed=seed + i)
        else:
            out[name] = compress(prune_(d, p, seed=seed + i), format=fmt)
    if dense:
        out["norm"] = randn(*net.norm.shape, dtype=net.norm.dtype)
    return out


def expected(base: dict[str, torch.Tensor], delta: dict, dtype) -> dict[str, torch.Tensor]:
    """The library's rule: SparseDelta.add_to_ (what `darex apply` runs), dense parts copied."""
    out = dict(base)
    for k, d in delta.items():
        if isinstance(d, SparseDelta):
            out[k] = bits(d.add_to_(base[k].clone().view(dtype)))
        else:
            out[k] = bits(d)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("index", ["auto", "regenerate"])
def test_round_trip_bit_exact(fmt, dtype, index, device):
    net = special_net(dtype)
    base = snapshot(net)
    delta = make_delta(net, fmt, 0.5, seed=3)  # on the CPU; add() moves it to the model's device
    net.to(device)
    bank = DeltaBank(net, index=index)
    bank.add("ft", delta)
    assert_bits(net, base)  # add() touches nothing
    bank.activate("ft")
    assert bank.active_name == "ft"
    want = expected(base, delta, dtype)  # the CPU kernels' bits: CUDA must give the same
    assert_bits(net, want)
    assert not torch.equal(want["w1"], base["w1"])  # the delta did something
    bank.deactivate()
    assert bank.active_name is None
    assert_bits(net, base)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_switching_many_times_drifts_nothing(dtype):
    net = special_net(dtype)
    base = snapshot(net)
    deltas = {f"{fmt}{p}": make_delta(net, fmt, p, seed=11 + j) for j, (fmt, p) in
              enumerate((f, p) for f in FORMATS for p in (0.5, 0.99))}
    bank = DeltaBank(net)
    for name, d in deltas.items():
        bank.add(name, d)
    want = {name: expected(base, d, dtype) for name, d in deltas.items()}
    rng = random.Random(0)
    for _ in range(40):
        name = rng.choice(list(deltas) + [None])
        bank.switch(name)
        assert_bits(net, base if name is None else want[name])
    bank.deactivate()
    assert_bits(net, base)


def test_active_context_restores_what_was_active():
    net = special_net(torch.bfloat16)
    base = snapshot(net)
    a, b = make_delta(net, "seeded", 0.9, 1), make_delta(net, "csr", 0.9, 2)
    bank = DeltaBank(net)
    bank.add("a", a)
    bank.add("b", b)
    with bank.active("a"):
        assert_bits(net, expected(base, a, torch.bfloat16))
        with bank.active("b"):
            assert_bits(net, expected(base, b, torch.bfloat16))
            with bank.active(None):
                assert_bits(net, base)
        assert bank.active_name == "a"
    assert bank.active_name is None
    assert_bits(net, base)
    with pytest.raises(KeyError):
        with bank.active("b"):
            raise KeyError("inside")
    assert_bits(net, base)


def test_activate_semantics():
    net = Net(torch.float32)
    base = snapshot(net)
    bank = DeltaBank(net)
    bank.add("a", make_delta(net, "seeded", 0.9, 1))
    bank.add("b", make_delta(net, "bitmask", 0.9, 2))
    bank.activate("a")
    after_a = snapshot(net)
    bank.activate("a")  # already active: a no-op, not a second add
    assert_bits(net, after_a)
    with pytest.raises(RuntimeError, match="'a' is active"):
        bank.activate("b")
    assert_bits(net, after_a)
    with pytest.raises(ValueError, match="name: no delta named 'c'"):
        bank.activate("c")
    with pytest.raises(ValueError, match="name: no delta named 'c'"):
        bank.switch("c")
    assert bank.active_name == "a"
    assert_bits(net, after_a)
    with pytest.raises(RuntimeError, match="deactivate"):
        bank.remove("a")
    bank.switch("b")
    bank.remove("a")
    assert bank.names == ["b"]
    bank.deactivate()
    bank.deactivate()  # nothing active: a no-op
    assert_bits(net, base)


def _mismatches(net: Net):
    good = make_delta(net, "csr", 0.9, 1)
    yield "not in the model", {**good, "missing.weight": good["b1"]}
    yield "float32", {**good, "w1": compress_dare(randn(24, 37, dtype=torch.float64), 0.9, seed=1)}
    yield r"\[24, 37\]", {**good, "w1": compress_dare(randn(37, 24), 0.9, seed=1)}
    yield r"float32\[37\] in the model but float32\[36\]", {**good, "norm": randn(36)}
    yield "stored whole", {**good, "nonexistent": randn(36)}
    yield "float32", {**good, "norm": randn(37, dtype=torch.float16)}


@pytest.mark.parametrize("case", range(6))
def test_mismatch_refused_before_anything_is_touched(case):
    net = Net(torch.float32)
    bank = DeltaBank(net)
    bank.add("ok", make_delta(net, "seeded", 0.9, 5))
    bank.activate("ok")
    snap = snapshot(net)
    match, delta = list(_mismatches(net))[case]
    with pytest.raises(ValueError, match=match):
        bank.add("bad", delta)
    assert bank.names == ["ok"] and bank.active_name == "ok"
    assert_bits(net, snap)


def test_tied_parameters_refused():
    net = Net(torch.float32)
    net.alias = net.w1  # the same Parameter under two names, as tied embeddings are
    bank = DeltaBank(net)
    d = make_delta(net, "seeded", 0.9, 1, dense=False)
    snap = snapshot(net)
    with pytest.raises(ValueError, match="tied"):
        bank.add("t", {**d, "alias": d["w1"]})
    bank.add("one", d)  # one of the two names is fine
    assert_bits(net, snap)


def test_model_changed_after_add_is_refused():
    net = Net(torch.float32)
    bank = DeltaBank(net)
    bank.add("a", make_delta(net, "bitmask", 0.9, 1))
    net.w1 = nn.Parameter(randn(24, 36))
    snap = snapshot(net)
    with pytest.raises(ValueError, match="no longer matches"):
        bank.activate("a")
    assert_bits(net, snap)
    assert bank.active_name is None


def test_malformed_delta_refused_at_add():
    net = Net(torch.float32)
    bank = DeltaBank(net)
    good = make_delta(net, "csr", 0.9, 1, dense=False)
    sd = good["w1"]
    col = sd.payload["col"].clone()
    col[0] = 200  # past the 37 columns
    bad = SparseDelta("csr", sd.shape, sd.dtype, {**sd.payload, "col": col}, sd.meta)
    with pytest.raises(FormatError, match="column"):
        bank.add("bad", {**good, "w1": bad})
    seeded = compress_dare(randn(24, 37), 0.9, seed=1)
    short = SparseDelta("seeded", seeded.shape, seeded.dtype, {"values": seeded.values[:-1].clone()}, seeded.meta)
    with pytest.raises(FormatError, match="keeps"):
        bank.add("bad", {"w1": short})
    assert len(bank) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_failure_half_way_restores_the_base(fmt, monkeypatch):
    net = special_net(torch.float16)
    base = snapshot(net)
    bank = DeltaBank(net)
    delta = make_delta(net, fmt, 0.5, 1)
    bank.add("a", delta)
    real, calls = bank_mod.positions_add_, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure on the 3rd tensor")
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_mod, "positions_add_", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        bank.activate("a")
    assert len(calls) == 3
    assert bank.active_name is None
    assert_bits(net, base)
    monkeypatch.setattr(bank_mod, "positions_add_", real)
    bank.activate("a")  # and it still works after
    assert_bits(net, expected(base, delta, torch.float16))
    bank.deactivate()
    assert_bits(net, base)


def test_failure_in_switch_leaves_the_base(monkeypatch):
    net = Net(torch.bfloat16)
    base = snapshot(net)
    bank = DeltaBank(net)
    bank.add("a", make_delta(net, "seeded", 0.9, 1))
    bank.add("b", make_delta(net, "csr", 0.9, 2))
    bank.activate("a")
    real, calls = bank_mod.positions_add_, []

    def broken(*args, **kwargs):  # the 3rd tensor of b fails: 2 switched, 1 still a's
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_mod, "positions_add_", broken)
    with pytest.raises(RuntimeError, match="injected"):
        bank.switch("b")
    assert bank.active_name is None
    assert_bits(net, base)
    monkeypatch.setattr(bank_mod, "positions_add_", real)
    bank.switch("b")
    bank.switch("a")
    bank.deactivate()
    assert_bits(net, base)


def test_threads_switching_concurrently_end_consistent():
    net = Net(torch.bfloat16)
    base = snapshot(net)
    deltas = {f"d{i}": make_delta(net, FORMATS[i % 3], 0.9, 20 + i) for i in range(4)}
    bank = DeltaBank(net)
    for n, d in deltas.items():
        bank.add(n, d)
    want = {n: expected(base, d, torch.bfloat16) for n, d in deltas.items()}
    errors = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(25):
                name = rng.choice(list(deltas))
                if rng.random() < 0.5:
                    bank.switch(name)
                else:
                    with bank.active(name):  # holds the lock: no one else switches meanwhile
                        state = net.state_dict()
                        for k, v in want[name].items():
                            assert torch.equal(bits(state[k]), v), k
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    final = bank.active_name
    assert_bits(net, base if final is None else want[final])
    bank.deactivate()
    assert_bits(net, base)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (5, 9), (3, 4, 17), (2, 70000)])
def test_kept_positions_match_the_decoded_delta(fmt, shape, monkeypatch):
    monkeypatch.setattr(positions_mod, "_CHUNK", 64)  # seeded: many chunks, offsets across them
    d = randn(*shape)
    sd = compress_dare(d, 0.7, seed=9) if fmt == "seeded" else compress(prune_(d, 0.7, seed=9), format=fmt)
    pos = kept_positions(sd)
    assert pos.dtype == torch.int64
    assert torch.equal(pos, sd.to_dense().reshape(-1).nonzero().view(-1))
    for mode in ("cache", "regenerate"):
        assert torch.equal(KeptIndex(sd, mode).positions(), pos)


@pytest.mark.parametrize("spec", ["skip", "philox"])
@pytest.mark.parametrize("p", [0.03, 0.5, 0.99])  # 0.03 and 0.99: spec v2 walks, its mask is not v1's
def test_seeded_positions_follow_the_recorded_mask_spec(spec, p, monkeypatch):
    monkeypatch.setattr(positions_mod, "_CHUNK", 4096 * 3 + 17)  # chunks that start inside a stripe
    d = randn(5, 9001) + 3.0  # no zero values: the decoded non-zeros are exactly the kept positions
    sd = compress_dare(d, p, seed=4, mask=spec)
    assert sd.meta["mask"] == spec
    pos = kept_positions(sd)
    assert torch.equal(pos, sd.to_dense().reshape(-1).nonzero().view(-1))
    net = nn.Linear(9001, 5, bias=False)
    base, before = bits(net.weight), net.weight.detach().clone()
    bank = DeltaBank(net)
    bank.add("ft", {"weight": sd})
    bank.activate("ft")
    assert torch.equal(bits(net.weight), bits(sd.add_to_(before)))
    bank.deactivate()
    assert torch.equal(bits(net.weight), base)


def test_release_v1_seeded_delta_through_the_bank():
    # files written before spec v2 carry no "mask" entry: the bank must read them as spec v1
    import os
    from darex_ext import storage
    fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "mask_v1")
    with storage.load(os.path.join(fixture, "deltas.safetensors")) as f:
        deltas = {name: f[name] for name in f.keys()}
    assert all("mask" not in sd.meta for sd in deltas.values() if sd.format == "seeded")
    for name, sd in deltas.items():
        if sd.numel == 0:
            continue
        net = nn.Module()
        net.register_parameter("w", nn.Parameter(randn(*sd.shape, dtype=sd.dtype)))
        base, before = bits(net.w), net.w.detach().clone()
        bank = DeltaBank(net)
        bank.add("v1", {"w": sd})
        bank.activate("v1")
        assert torch.equal(bits(net.w), bits(sd.add_to_(before))), name
        bank.deactivate()
        assert torch.equal(bits(net.w), base), name


def test_cache_falls_back_when_gaps_do_not_fit_16_bits():
    d = torch.zeros(3, 100000)
    d[0, 5], d[2, 99990] = 1.0, 2.0
    sd = compress(d, format="bitmask")
    idx = KeptIndex(sd, "cache")
    assert torch.equal(idx.positions(), torch.tensor([5, 2 * 100000 + 99990]))
    assert idx.nbytes == 2 * 4  # int32 positions, not uint16 gaps


def test_memory_report():
    net = Net(torch.bfloat16)
    bank = DeltaBank(net)
    delta = make_delta(net, "seeded", 0.9, 1)
    bank.add("a", delta)
    m = bank.memory()
    assert m["base"] == sum(t.numel() * t.element_size() for t in net.state_dict().values())
    kept = sum(d.kept for d in delta.values() if isinstance(d, SparseDelta))
    payload = sum(d.nbytes for d in delta.values() if isinstance(d, SparseDelta))
    assert m["deltas"]["a"] == payload + 2 * (kept - 3) + net.norm.numel() * 2  # uint16 gaps, dense part
    assert m["active"] == 0 and m["total"] == m["base"] + m["deltas_total"]
    bank.activate("a")
    assert bank.memory()["active"] == 2 * kept + net.norm.numel() * 2  # saved base values
    bank.deactivate()
    assert bank.memory()["active"] == 0


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
@pytest.mark.parametrize("index", ["auto", "regenerate"])
def test_cached_index_keeps_values_and_gaps_not_the_payload(fmt, index):
    net = Net(torch.bfloat16)
    base = snapshot(net)
    delta = make_delta(net, fmt, 0.99, 4, dense=False)
    bank = DeltaBank(net, index=index)
    bank.add("b", delta)
    kept = sum(d.kept for d in delta.values())
    values = 2 * kept
    payload = sum(d.nbytes for d in delta.values())
    nonempty = sum(1 for d in delta.values() if d.kept)
    if index == "auto":  # values + uint16 gaps (the first position of each tensor is held apart)
        assert bank.memory()["deltas"]["b"] == values + 2 * (kept - nonempty)
    else:  # regenerating the positions needs the bits / column indices
        assert bank.memory()["deltas"]["b"] == payload
    bank.activate("b")
    assert_bits(net, expected(base, delta, torch.bfloat16))
    bank.deactivate()
    assert_bits(net, base)


def test_bad_arguments_name_the_argument(tmp_path):
    net = Net(torch.float32)
    with pytest.raises(TypeError, match="model"):
        DeltaBank(object())
    with pytest.raises(ValueError, match="index"):
        DeltaBank(net, index="sometimes")
    bank = DeltaBank(net)
    with pytest.raises(TypeError, match="name"):
        bank.add(3, {})
    with pytest.raises(TypeError, match="name"):
        bank.add("", {})
    with pytest.raises(TypeError, match="delta"):
        bank.add("a", 5)
    with pytest.raises(TypeError, match=r"delta\['w1'\]"):
        bank.add("a", {"w1": [1, 2]})
    with pytest.raises(FileNotFoundError):
        bank.add("a", str(tmp_path / "nowhere"))
    bank.add("a", {})
    with pytest.raises(ValueError, match="name: a delta named 'a' is already"):
        bank.add("a", {})
    with pytest.raises(TypeError, match="name"):
        bank.activate(1)
    with pytest.raises(TypeError, match="deltas"):
        DeltaBank.from_pretrained(str(tmp_path), ["x"])
    with pytest.raises(TypeError, match="base_dir"):
        DeltaBank.from_pretrained(3, {})


def test_non_contiguous_parameter_refused():
    net = Net(torch.float32)
    net.w1 = nn.Parameter(randn(37, 24).t())  # a transposed view: not contiguous
    bank = DeltaBank(net)
    snap = snapshot(net)
    with pytest.raises(ValueError, match="w1: the model's tensor is not contiguous"):
        bank.add("a", make_delta(net, "seeded", 0.9, 1, dense=False))
    assert len(bank) == 0
    assert_bits(net, snap)


def test_empty_delta_and_repr():
    net = Net(torch.float64)
    snap = snapshot(net)
    bank = DeltaBank(net)
    bank.add("nothing", {})
    with bank.active("nothing"):
        assert_bits(net, snap)
        assert "active='nothing'" in repr(bank)
    assert "nothing" in bank and len(bank) == 1

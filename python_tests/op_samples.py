"""Sample inputs for every darex dispatcher op, shared by the correctness tests
(python_tests/ops/test_<op>.py: each sample against the reference twin) and the generated
`torch.library.opcheck` test (python_tests/ops/test_opcheck.py), as pytorch/extension-cpp does.

A sample is the op's positional arguments (the dispatcher's, not the Python wrapper's), which of
them the op mutates, and the reference's answer for them. Data is random with no zeros unless a
sample needs zeros (the storage packers drop them); every sample is small, so opcheck stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from darex_ext import reference as ref

from conftest import randn


@dataclass
class Sample:
    args: tuple
    reference: Callable[..., object]   # called with the (unmodified) args, returns the expected result
    mutated: int | None = None         # index of the argument the op writes (its result)
    exact: bool = True                 # False: float64 reductions, compared to 1e-12 relative


def _q_arg(q_rows, q):
    return q_rows if q_rows is not None else q


def _sparse(x: torch.Tensor, p: float = 0.6) -> torch.Tensor:
    return torch.where(torch.rand(x.shape, device=x.device) < p, torch.zeros_like(x), x)


def _threshold(scores: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    s = scores.double().reshape(-1)
    value = torch.sort(s, descending=largest).values[k - 1]
    beyond = int((s > value).sum()) if largest else int((s < value).sum())
    return torch.tensor([float(value), beyond, k - beyond], dtype=torch.float64, device=scores.device)


def _prune(device) -> list[Sample]:
    x = randn(7, 9, device=device)
    q = torch.rand(7, device=device) + 0.1
    r = lambda d, p, s, o, qr, qs: ref.prune(d, p, _q_arg(qr, qs), seed=s, offset=o)  # noqa: E731
    return [Sample((x.clone(), 0.5, 3, 0, None, 0.5), r, 0),
            Sample((x.clone(), 0.9, -5, 2, q, 1.0), r, 0),
            Sample((randn(33, dtype=torch.bfloat16, device=device), 0.99, 7, 5, None, 0.05), r, 0)]


def _dare(device) -> list[Sample]:
    x, b = randn(7, 9, device=device), randn(7, 9, device=device)
    q = torch.rand(7, device=device) + 0.1
    r = lambda f, bb, p, s, o, qr, qs: ref.dare(f, bb, p, _q_arg(qr, qs), seed=s, offset=o)  # noqa: E731
    return [Sample((x, b, 0.5, 3, 0, None, 0.5), r),
            Sample((x, b, 0.5, 3, 1, q, 1.0), r),
            Sample((x.half(), b.half(), 0.9, 4, 0, None, 0.1), r)]


def _dare_out(device) -> list[Sample]:
    x, b = randn(7, 9, device=device), randn(7, 9, device=device)
    r = lambda f, bb, p, s, o, qr, qs, out: ref.dare(f, bb, p, _q_arg(qr, qs), seed=s, offset=o)  # noqa: E731
    return [Sample((x, b, 0.5, 3, 0, None, 0.5, torch.empty_like(x)), r, 7)]


def _keep_mask(device) -> list[Sample]:
    r = lambda like, p, s, o: ref.keep_mask(like.shape, p, s, offset=o, device=like.device)  # noqa: E731
    return [Sample((randn(7, 9, device=device), 0.3, 4, 0), r),
            Sample((randn(65, device=device, dtype=torch.float64), 0.9, -1, 3), r)]


def _kept_abs_sum(device) -> list[Sample]:
    def r(d, p, s, o):
        a = d.double().abs()
        mask = ref.keep_mask(d.shape, p, s, offset=o, device=d.device)
        return torch.stack([a[mask].sum(), a.sum()])
    return [Sample((randn(7, 9, device=device), 0.3, 4, 0), r, exact=False)]


def _topk_mask(device) -> list[Sample]:
    x = randn(6, 11, device=device)
    r = lambda s, k, largest, per_row: ref.topk_mask(s, k, dim=-1 if per_row else None, largest=largest)  # noqa: E731
    return [Sample((x, 5, True, False), r), Sample((x, 3, False, True), r),
            Sample((x.bfloat16(), 20, True, False), r)]


def _topk_threshold(device) -> list[Sample]:
    x = randn(6, 11, device=device)
    return [Sample((x, 5, True), _threshold), Sample((x, 1, False), _threshold)]


def _magnitude_prune(device) -> list[Sample]:
    def r(d, keep, per_row, q):
        n = d[0].numel() if per_row else d.numel()
        return ref.magnitude_prune(d, (n - keep) / n, "row" if per_row else "tensor", q)
    x = randn(6, 11, device=device)
    return [Sample((x.clone(), 20, False, None), r, 0), Sample((x.clone(), 4, True, 0.5), r, 0)]


def _wanda_prune(device) -> list[Sample]:
    def r(d, act, keep, q):
        return ref.wanda_prune(d, act, (d.shape[1] - keep) / d.shape[1], q)
    x = randn(6, 11, device=device)
    act = torch.rand(11, device=device) + 0.1
    return [Sample((x.clone(), act, 4, None), r, 0), Sample((x.clone(), act, 7, 0.25), r, 0)]


def _structural_prune(device) -> list[Sample]:
    r = lambda d, p, dim, s, o, q: ref.structural_prune(d, p, dim, q, seed=s, offset=o)  # noqa: E731
    x = randn(6, 11, device=device)
    return [Sample((x.clone(), 0.5, 0, 3, 0, 0.5), r, 0), Sample((x.clone(), 0.3, 1, -2, 4, 0.9), r, 0)]


def _magnitude_rank_mask(device) -> list[Sample]:
    r = lambda d, lo, hi, s, o: ref.magnitude_rank_mask(d, lo, hi, seed=s, offset=o)  # noqa: E731
    x = randn(6, 11, device=device)
    return [Sample((x, 0.35, 0.65, 3, 0), r), Sample((x.bfloat16(), 0.9, 0.1, -2, 5), r),
            Sample((randn(1, 33, dtype=torch.float64, device=device), 0.0, 1.0, 7, 0), r)]


def _row_moments(device) -> list[Sample]:
    x = randn(6, 11, device=device)
    v = randn(11, dtype=torch.float64, device=device)
    b = randn(6, dtype=torch.float64, device=device)
    r = lambda d, xx, bias: ref.row_moments(d, xx, bias)  # noqa: E731
    return [Sample((x, v, None), r, exact=False), Sample((x, v, b), r, exact=False)]


def _storage_inputs(device):
    x = ref.prune(randn(7, 19, device=device), 0.5, seed=3)
    base = randn(7, 19, device=device)
    return x, base


def _seeded_pack(device) -> list[Sample]:
    x, _ = _storage_inputs(device)
    q = torch.rand(7, device=device) + 0.1
    r = lambda d, p, s, o, qr, qs: ref.seeded_pack(d, p, _q_arg(qr, qs), seed=s, offset=o)  # noqa: E731
    return [Sample((x, 0.5, 3, 0, None, 0.5), r), Sample((x, 0.9, -5, 2, q, 1.0), r)]


def _keep_count(device) -> list[Sample]:
    r = lambda like, p, s, o: torch.tensor(ref.keep_count(like.numel(), p, s, offset=o))  # noqa: E731
    return [Sample((randn(7, 19, device=device), 0.3, 4, 1), r)]


def _seeded_scatter(device) -> list[Sample]:
    x, base = _storage_inputs(device)
    sv = ref.seeded_pack(x, 0.5, seed=3)
    r = lambda out, v, p, s, o, a, acc: ref.seeded_scatter(out, v, p, seed=s, offset=o, alpha=a,  # noqa: E731
                                                           accumulate=acc)
    return [Sample((base.clone(), sv, 0.5, 3, 0, 1.0, False), r, 0),
            Sample((base.clone(), sv, 0.5, 3, 0, 0.5, True), r, 0)]


def _bitmask_pack(device) -> list[Sample]:
    x, _ = _storage_inputs(device)
    return [Sample((x,), ref.bitmask_pack), Sample((_sparse(randn(3, 4, 13, device=device)),), ref.bitmask_pack)]


def _bitmask_scatter(device) -> list[Sample]:
    x, base = _storage_inputs(device)
    vals, bm, ro = ref.bitmask_pack(x)
    r = lambda out, v, b, o, a, acc: ref.bitmask_scatter(out, v, b, alpha=a, accumulate=acc)  # noqa: E731
    return [Sample((base.clone(), vals, bm, ro, 1.0, False), r, 0),
            Sample((base.clone(), vals, bm, ro, -1.5, True), r, 0)]


def _csr_pack(device) -> list[Sample]:
    x, _ = _storage_inputs(device)
    return [Sample((x,), ref.csr_pack), Sample((_sparse(randn(300, device=device)),), ref.csr_pack)]


def _csr_scatter(device) -> list[Sample]:
    x, base = _storage_inputs(device)
    crow, col, cv = ref.csr_pack(x)
    r = lambda out, cr, c, v, a, acc: ref.csr_scatter(out, cr, c, v, alpha=a, accumulate=acc)  # noqa: E731
    return [Sample((base.clone(), crow, col, cv, 1.0, False), r, 0),
            Sample((base.clone(), crow, col, cv, 2.0, True), r, 0)]


def _positions(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = randn(5, 37, device=device)
    pos = torch.tensor([0, 3, 4, 40, 99, 184], dtype=torch.int64, device=device)
    return target, pos, randn(pos.numel(), device=device)


def _positions_add(device) -> list[Sample]:
    target, pos, vals = _positions(device)
    saved = torch.empty(pos.numel(), device=device)
    return [Sample((target, pos, vals, saved), lambda t, p, v, s: ref.positions_add(t, p, v)[0], 0)]


def _positions_put(device) -> list[Sample]:
    target, pos, vals = _positions(device)
    return [Sample((target, pos, vals), ref.positions_put, 0)]


# Every dispatcher op, by its schema file (csrc/ops/<file>.cpp).
SAMPLES: dict[str, Callable[[str], list[Sample]]] = {
    "prune_": _prune, "dare": _dare, "dare_out": _dare_out, "keep_mask": _keep_mask,
    "kept_abs_sum": _kept_abs_sum,
    "topk_mask": _topk_mask, "topk_threshold": _topk_threshold, "magnitude_prune_": _magnitude_prune,
    "wanda_prune_": _wanda_prune,
    "structural_prune_": _structural_prune,
    "magnitude_rank_mask": _magnitude_rank_mask,
    "row_moments": _row_moments,
    "seeded_pack": _seeded_pack, "keep_count": _keep_count, "seeded_scatter_": _seeded_scatter,
    "bitmask_pack": _bitmask_pack, "bitmask_scatter_": _bitmask_scatter,
    "csr_pack": _csr_pack, "csr_scatter_": _csr_scatter,
    "positions_add_": _positions_add, "positions_put_": _positions_put,
}
# How many samples each op has (the same on every device), for test ids.
SAMPLE_COUNTS = {op: len(make("cpu")) for op, make in SAMPLES.items()}


def samples(op: str, device) -> list[Sample]:
    return SAMPLES[op](device)


def _clone_args(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def same_result(got, want, exact: bool) -> bool:
    if isinstance(want, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and \
            all(same_result(g, w, exact) for g, w in zip(got, want))
    want = torch.as_tensor(want, device=got.device)
    if got.shape != want.shape:
        return False
    if not exact:
        return bool(torch.allclose(got.double(), want.double(), rtol=1e-12, atol=0.0))
    if got.dtype != want.dtype:  # column indices: compare the values, not the width
        if got.is_floating_point() or want.is_floating_point():
            return False
        return torch.equal(got.to(torch.int64), want.to(torch.int64))
    if got.is_floating_point():  # bits, so -0.0 and NaN payloads count
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
        return torch.equal(got.contiguous().view(width), want.contiguous().view(width))
    return torch.equal(got, want)


def check_samples_against_reference(op: str, device) -> None:
    """Run the dispatcher op on each of its samples and compare with the reference twin."""
    for i, s in enumerate(samples(op, device)):
        args = _clone_args(s.args)
        result = getattr(torch.ops.darex, op).default(*args)
        got = args[s.mutated] if s.mutated is not None else result
        want = s.reference(*s.args)
        assert same_result(got, want, s.exact), f"darex::{op} sample {i} differs from the reference"

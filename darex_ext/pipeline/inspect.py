"""`darex inspect`: a per-tensor table of a delta directory/file or a model (optionally against
its base): format, density, bytes per parameter, delta statistics; for a model against its base,
one model-level recommendation with its reasons (measured on calibration text when given, see
inspect_measure.py). A delta that is already pruned gets no recommendation."""

from __future__ import annotations

import os
import sys
from typing import IO

import torch

from ..algorithms.recommend import DeltaStats, TensorStats, recommend, tensor_stats
from .checkpoint import Checkpoint, read_header
from .output import DELTA_FILE

__all__ = ["inspect_path", "is_delta", "recommendation", "model_recommendation"]


def is_delta(path: str) -> bool:
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, DELTA_FILE))
    if os.path.isfile(path) and path.endswith(".safetensors"):
        _, meta = read_header(path)
        return "darex.format" in meta or "darex.layout" in meta
    return False


def recommendation(delta: torch.Tensor, p: float) -> str:
    """darex_ext.algorithms.recommend's method for this delta at drop rate p, from the delta
    alone (no labels, unlabeled calibration text obtainable, fine-tuning not under our
    control); "-" when the delta is empty or p is 0."""
    if delta.numel() == 0 or not 0.0 < p < 1.0:
        return "-"
    advice = recommend(delta, p, has_labels=False, has_calibration_data=True)
    return advice.method + (f" ({advice.q} q)" if advice.q else "")


def model_recommendation(per_tensor: dict[str, TensorStats], p: float):
    """One recommendation for the whole model from its tensors' statistics."""
    stats = DeltaStats.combine(per_tensor)
    return recommend(stats, p, has_labels=False, has_calibration_data=True)


def _stats(t: torch.Tensor) -> tuple[float, float, float]:
    """(fraction nonzero, max |x|, rms) in float64."""
    if t.numel() == 0:
        return 0.0, 0.0, 0.0
    x = t.detach().to(torch.float64).reshape(-1)
    return (float((x != 0).sum()) / x.numel(), float(x.abs().max()), float(x.square().mean().sqrt()))


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape) or "()"


def _table(rows: list[list[str]], header: list[str], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    print(line(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line(r), file=out)


def _inspect_delta(path: str, limit: int, p: float, out: IO[str]) -> None:
    from .. import storage
    from .apply import delta_paths

    delta_file, dense_file, _ = delta_paths(path)
    rows, total_bytes, total_params = [], 0, 0
    with storage.load(delta_file) as deltas:
        meta = dict(deltas.metadata or {})
        try:
            p = float(meta.get("darex.p", p))
        except ValueError:
            pass
        for i, name in enumerate(deltas):
            d = deltas[name]
            numel = 1
            for s in d.shape:
                numel *= s
            total_bytes += d.nbytes
            total_params += numel
            if limit and i >= limit:
                continue
            dense = d.to_dense()
            _, absmax, rms = _stats(dense)
            rows.append([name, d.format, _shape(d.shape), f"{d.density:.4f}", f"{d.nbytes / max(numel, 1):.3f}",
                         f"{d.nbytes:,}", f"{absmax:.3g}", f"{rms:.3g}"])
    if dense_file:
        ck = Checkpoint(dense_file)
        for name, info in ck.infos.items():
            total_bytes += info.nbytes
            total_params += info.numel
            if not limit or len(rows) < limit:
                rows.append([name, "stored", _shape(info.shape), "1.0000", f"{info.nbytes / max(info.numel, 1):.3f}",
                             f"{info.nbytes:,}", "", ""])
    keys = ("darex.method", "darex.p", "darex.q", "darex.seed", "darex.mask", "darex.format")
    print("delta " + path + ": " + ", ".join(f"{k.split('.', 1)[1]}={meta[k]}" for k in keys if meta.get(k)), file=out)
    _table(rows, ["tensor", "format", "shape", "density", "B/param", "bytes", "max|d|", "rms(d)"], out)
    print(f"total: {len(rows)} tensors shown, {total_params:,} parameters in {total_bytes:,} bytes "
          f"({total_bytes / max(total_params, 1):.3f} B/param)", file=out)


def _inspect_model(path: str, base: str | None, limit: int, p: float, out: IO[str], calibration: str | None,
                   samples: int | None, seq_len: int, unit: str, device: str) -> None:
    ck = Checkpoint(path)
    b = Checkpoint(base) if base else None
    rows = []
    per_tensor: dict[str, TensorStats] = {}
    for i, (name, info) in enumerate(ck.infos.items()):
        shown = not limit or i < limit
        if not shown and b is None:
            break
        row = [name, str(info.dtype).replace("torch.", ""), _shape(info.shape), f"{info.nbytes / max(info.numel, 1):.3f}"]
        comparable = (b is not None and name in b and b.infos[name].shape == info.shape
                      and info.dtype.is_floating_point)
        if comparable:
            delta = ck.get(name).to(torch.float32) - b.get(name).to(torch.float32)
            per_tensor[name] = tensor_stats(delta)
            if shown:
                density, absmax, rms = _stats(delta)
                row += [f"{density:.4f}", f"{absmax:.3g}", f"{rms:.3g}"]
        elif b is not None:
            row += ["", "", "(not in base)" if name not in b else ""]
        else:
            t = ck.get(name)
            _, absmax, rms = _stats(t) if info.dtype.is_floating_point else (0, 0.0, 0.0)
            row += [f"{absmax:.3g}", f"{rms:.3g}"]
        if shown:
            rows.append(row)
    head = ["tensor", "dtype", "shape", "B/param"]
    head += ["density(d)", "max|d|", "rms(d)"] if b is not None else ["max|x|", "rms(x)"]
    print(f"model {path}" + (f" against base {base}" if base else "") + f": {len(ck.infos)} tensors, "
          f"{sum(t.numel for t in ck.infos.values()):,} parameters", file=out)
    _table(rows, head, out)
    if b is None or not per_tensor:
        return
    if calibration is not None:
        _print_measured(path, base, calibration, p, samples, seq_len, unit, device, out)
        return
    advice = model_recommendation(per_tensor, p)
    what = advice.method + (f" ({advice.q} q)" if advice.q else "")
    print(f"\nrecommendation at p = {p:g}: {what}", file=out)
    for reason in advice.reasons:
        print(f"  - {reason}", file=out)
    if advice.method == "darex-q":
        print("  - measure it: darex inspect PATH --base BASE --calibration TEXT (unlabeled text) ranks DARE, "
              "DAREx-q (auto, analytic, learned) and magnitude by output change", file=out)


def _print_measured(path: str, base: str, calibration: str, p: float, samples: int | None, seq_len: int, unit: str,
                    device: str, out: IO[str]) -> None:
    from .inspect_measure import measure_methods

    results = measure_methods(base, path, calibration, p, samples=samples, seq_len=seq_len, unit=unit,
                              device=device)
    print(f"\nmeasured at p = {p:g} on {calibration} (label-free output change, lower is better):", file=out)
    _table([[m.method, f"{m.change:.4g}", m.note] for m in results], ["method", "output change", ""], out)
    best = results[0]
    print(f"\nrecommendation at p = {p:g}: {best.method} (the smallest output change): "
          f"darex prune BASE PATH -p {p:g} {best.options}", file=out)


def inspect_path(path: str, *, base: str | None = None, limit: int = 0, p: float = 0.99,
                 out: IO[str] | None = None, calibration: str | None = None, samples: int | None = None,
                 seq_len: int = 128, calibration_unit: str = "auto", device: str = "cpu") -> None:
    """Print the table. p: the drop rate the recommendation is for (a model against its base).
    calibration: a text file; the recommendation is then measured (inspect_measure.py)."""
    out = out or sys.stdout
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if is_delta(path):
        if base is not None:
            raise ValueError("--base applies to a model, not to a delta")
        if calibration is not None:
            raise ValueError("--calibration applies to a model against its --base, not to a delta")
        _inspect_delta(path, limit, p, out)
    else:
        if calibration is not None and base is None:
            raise ValueError("--calibration needs --base (the recommendation is for the delta PATH - BASE)")
        _inspect_model(path, base, limit, p, out, calibration, samples, seq_len, calibration_unit, device)

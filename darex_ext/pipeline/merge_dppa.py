"""`darex merge --method dppa`: DPPA of every fine-tune, then the sum of the amplified deltas,
streaming one tensor of every model at a time.

Per fine-tune i, as the authors' pipeline does it (github.com/northsky0307/DPPA-Pruning-Method-
for-Large-Language-Model-to-Model-Merging, ``run.sh``):

    delta_i = ft_i - base                       (the checkpoint dtype; scrips/get_offset.py)
    DP at drop rate p and at p - width          (prune_all.py's prune_mag_outlier_layer_wei, run
                                                 twice; one statistics pass here: the densities of
                                                 both runs come from the same statistics)
    amp_i   = DPA(delta_i, alpha_hi, alpha_lo)  (scrips/enhance_offset.py: the larger-magnitude
                                                 product; tensors outside the blocks get max(alpha))

    merged  = base + lam * sum_i w_i * amp_i    (float32, float64 for float64; one rounding to the
                                                 base's dtype)

With one fine-tune, weight 1 and lambda 1 this is the repository's output
(``scrips/offset_add_base_model.py`` adds the amplified delta to the base in float32), rounded to
the checkpoint's dtype where they save float32. The repository processes one fine-tune and has
no merge step of its own; several fine-tunes are merged here by task arithmetic of their DPPA
deltas (weights w_i, default 1, and lambda). The alphas are given (the authors' search needs
task evaluations: darex_ext.algorithms.search_amplification); the defaults are run.sh's start
point (1.8, 0.0).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from typing import Any

import torch

from ..algorithms.dppa import amplify_tensor, dppa_keep_mask, wide_drop_rate
from ..ops import _checks
from ._malloc import fixed_mmap_threshold
from .checkpoint import Checkpoint
from .merge import plan_merge
from .output import write_model
from .prune import dppa_model_densities
from .workers import run_workers
from .writer import layout_of

__all__ = ["DEFAULT_ALPHA_HI", "DEFAULT_ALPHA_LO", "DEFAULT_WIDTH", "check_dppa_config", "dppa_merge_rates",
           "dppa_delta", "merge_dppa_models"]

DEFAULT_ALPHA_HI, DEFAULT_ALPHA_LO, DEFAULT_WIDTH = 1.8, 0.0, 0.1


def _finite(value, name: str) -> float:
    value = _checks.real(value, name)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def check_dppa_config(cfg) -> None:
    """MergeConfig's DPPA rules: the DPPA options only with method 'dppa'; dppa needs p and takes
    no option its merge does not use. Raises ValueError naming the option."""
    given = [k for k in ("alpha_hi", "alpha_lo", "width") if getattr(cfg, k, None) is not None]
    if cfg.method != "dppa":
        if given:
            raise ValueError(f"{', '.join(given)} (--{given[0].replace('_', '-')}) applies to method 'dppa' only")
        return
    if cfg.p is None:
        raise ValueError("method 'dppa' needs -p (the DPPA drop rate, e.g. 0.9)")
    for key in ("alpha_hi", "alpha_lo"):
        if getattr(cfg, key, None) is not None:
            _finite(getattr(cfg, key), f"{key} (--{key.replace('_', '-')})")
    if getattr(cfg, "width", None) is not None and not _finite(cfg.width, "width (--width)") >= 0.0:
        raise ValueError(f"width (--width) must be >= 0, got {cfg.width}")
    if cfg.normalize:
        raise ValueError("normalize does not apply to method 'dppa' (it adds the amplified deltas)")
    # Options of the other methods (and of mergekit YAML configs) that dppa's merge never reads.
    for key in ("dtype", "out_dtype", "tensor_parameters", "gamma", "epsilon", "consensus", "rescale"):
        if getattr(cfg, key, None) is not None:
            raise ValueError(f"{key} does not apply to method 'dppa'")


def _options(cfg) -> tuple[float, float, float]:
    pick = lambda value, default: default if value is None else float(value)  # noqa: E731
    return (pick(getattr(cfg, "alpha_hi", None), DEFAULT_ALPHA_HI),
            pick(getattr(cfg, "alpha_lo", None), DEFAULT_ALPHA_LO),
            pick(getattr(cfg, "width", None), DEFAULT_WIDTH))


def dppa_merge_rates(base: Checkpoint, finetuned: Checkpoint, selected: list[str], p: float,
                     width: float) -> tuple[dict[str, float], dict[str, float]]:
    """One fine-tune's DP drop rates at p (P_hi) and at p - width (the wider run), per matrix."""
    dens = dppa_model_densities(base, finetuned, selected, p)
    return dens.drop_rates(), dens.at(wide_drop_rate(p, width)).drop_rates()


def dppa_delta(base_t: torch.Tensor, ft_t: torch.Tensor, hi_rate: float | None, wide_rate: float | None,
               alpha_hi: float, alpha_lo: float) -> torch.Tensor:
    """One fine-tune's amplified delta for one tensor, in float32 (float64): a matrix in a block
    has its two DP rates; any other tensor (rates None) is kept whole by both runs."""
    delta = torch.sub(ft_t, base_t)
    if hi_rate is None:
        return amplify_tensor(delta, None, None, alpha_hi, alpha_lo)
    hi = dppa_keep_mask(delta, hi_rate)
    wide = dppa_keep_mask(delta, wide_rate) | hi
    return amplify_tensor(delta, hi, wide, alpha_hi, alpha_lo)


def _job(group, base: str, finetuned: list[str], out: str, cfg, rates, overwrite: bool,
         show_progress: bool) -> dict[str, Any]:
    fixed_mmap_threshold()
    start = time.perf_counter()
    selected = set(plan_merge(base, finetuned, cfg))
    b = Checkpoint(base)
    fts = [Checkpoint(p) for p in finetuned]
    dev = torch.device(cfg.device)
    alpha_hi, alpha_lo, _ = _options(cfg)
    weights = list(cfg.weights) if cfg.weights else [1.0] * len(fts)

    def compute(name: str) -> torch.Tensor:
        base_t = b.get(name)
        if name not in selected:
            return base_t
        base_t = base_t.to(dev)
        total = None
        for f, (hi_rates, wide_rates), w in zip(fts, rates, weights):
            amp = dppa_delta(base_t, f.get(name).to(dev), hi_rates.get(name), wide_rates.get(name),
                             alpha_hi, alpha_lo)
            if w != 1.0:
                amp.mul_(w)
            total = amp if total is None else total.add_(amp)
        if cfg.lam != 1.0:
            total.mul_(cfg.lam)
        # base + amplified in float32, as offset_add_base_model.py adds them; one rounding.
        return base_t.to(total.dtype).add_(total).to(base_t.dtype).cpu()

    summary = write_model(group, out, layout_of(b), compute, side_dir=b.directory, side_files=b.side_files(),
                          overwrite=overwrite, show_progress=show_progress, desc="merging (dppa)")
    summary.update(selected=len(selected), seconds=time.perf_counter() - start, config=asdict(cfg))
    return summary


def merge_dppa_models(base: str | os.PathLike, finetuned: list[str | os.PathLike], out: str | os.PathLike, cfg, *,
                      workers: int = 1, overwrite: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """DPPA merge of the fine-tunes into `out` (see the module docstring). Checks the plan, then
    reads every fine-tune's block matrices twice for the DP statistics, then merges."""
    if cfg.method != "dppa":
        raise ValueError(f"merge_dppa_models merges with method 'dppa', got {cfg.method!r}")
    check_dppa_config(cfg)
    base, out = os.fspath(base), os.fspath(out)
    finetuned = [os.fspath(p) for p in finetuned]
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    selected = plan_merge(base, finetuned, cfg)
    _, _, width = _options(cfg)
    b = Checkpoint(base)
    # Once here, not per worker: every worker then prunes with the same rates.
    rates = [dppa_merge_rates(b, Checkpoint(p), selected, cfg.p, width) for p in finetuned]
    return run_workers(_job, (base, finetuned, out, cfg, rates, overwrite, show_progress), workers=workers,
                       device=cfg.device, output=(out, overwrite))

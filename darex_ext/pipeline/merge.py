"""`darex merge`: one base and N fine-tunes in, one merged model out, streaming one tensor of
every model at a time (methods in darex_ext.algorithms.merge)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..algorithms.merge import MERGE_METHODS, merge_tensor
from ..seeds import resolve_seed
from ._malloc import fixed_mmap_threshold
from .checkpoint import Checkpoint
from .compat import CheckpointMismatch, check_same_tensors
from .output import write_model
from .select import PRESETS, select_names
from .workers import run_workers
from .writer import layout_of

__all__ = ["MergeConfig", "merge_models", "plan_merge", "MERGE_DTYPES"]

# mergekit's `dtype` / `out_dtype` names (mergekit.common.dtype_from_name, less int64).
MERGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


@dataclass(frozen=True)
class MergeConfig:
    method: str = "ties"
    weights: tuple[float, ...] | None = None
    p: float | None = None           # drop rate (TIES trim / DARE); TIES defaults to 0.8
    q: float | None = None           # DARE variants: rescale 1/q instead of 1/(1-p)
    lam: float = 1.0
    normalize: bool | None = None
    seed: int = 0
    preset: str = "all"
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    device: str = "cpu"
    # From a mergekit YAML (merge_config.py): inputs cast to `dtype` before merging (the result
    # written in `out_dtype`, default `dtype`), and per-tensor parameters that replace
    # weights / p / q / lam / normalize.
    dtype: str | None = None
    out_dtype: str | None = None
    tensor_parameters: Any = None
    # mergekit's method options (algorithms.merge.merge_tensor); None: the method's default.
    gamma: float | None = None         # breadcrumbs: fraction of largest entries dropped
    epsilon: float | None = None       # DELLA: spread of the keep probabilities
    consensus: str | None = None       # sign election: "sum" (TIES) or "count"
    rescale: str | None = None         # "none" | "l1" | "l2" | "linf" | "q" (DARE)
    # method "dppa" only (merge_dppa.py): DPA's factors and the gap between DP's two drop rates;
    # None: run.sh's 1.8, 0.0 and 0.1.
    alpha_hi: float | None = None
    alpha_lo: float | None = None
    width: float | None = None

    def __post_init__(self):
        import math

        from ..ops import _checks
        from .compat import check_device, check_drop_rate, check_q

        from .merge_dppa import check_dppa_config

        if self.method not in (*MERGE_METHODS, "dppa"):
            raise ValueError(f"method must be one of {(*MERGE_METHODS, 'dppa')}, got {self.method!r}")
        check_dppa_config(self)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for key in ("dtype", "out_dtype"):
            if getattr(self, key) not in (None, *MERGE_DTYPES):
                raise ValueError(f"{key} must be None or one of {sorted(MERGE_DTYPES)}, got {getattr(self, key)!r}")
        _check_method_options(self)
        if self.tensor_parameters is not None:
            if (self.weights, self.p, self.q, self.lam, self.normalize, self.gamma, self.epsilon, self.consensus,
                    self.rescale) != (None, None, None, 1.0, None, None, None, None, None):
                raise ValueError("tensor_parameters replaces weights, p, q, lam, normalize, gamma, epsilon, "
                                 "consensus and rescale: leave them unset")
        elif self.method not in ("task-arithmetic", "ties", "sce", "dppa") and self.p is None:
            raise ValueError(f"method {self.method!r} needs -p (the drop rate)")
        if self.p is not None:
            check_drop_rate(self.p, "p")
        if self.q is not None and not self.method.startswith("dare"):
            raise ValueError("q applies to the DARE methods only")
        if self.q is not None:
            check_q(self.q, "q")
        if not math.isfinite(_checks.real(self.lam, "lam")):
            raise ValueError(f"lam (--lambda) must be a finite number, got {self.lam}")
        for i, w in enumerate(self.weights or ()):
            if not math.isfinite(_checks.real(w, f"weights[{i}]")):
                raise ValueError(f"weights[{i}] (--weights) must be a finite number, got {w}")
        check_device(self.device)
        resolve_seed(self.seed)


def _check_method_options(cfg: MergeConfig) -> None:
    from ..ops import _checks

    if cfg.gamma is not None:
        if not cfg.method.startswith("breadcrumbs"):
            raise ValueError(f"gamma (--gamma) applies to the breadcrumbs methods, not {cfg.method!r}")
        if not 0.0 <= _checks.real(cfg.gamma, "gamma") <= 1.0:
            raise ValueError(f"gamma (--gamma) must be in [0, 1], got {cfg.gamma}")
    if cfg.epsilon is not None:
        if not cfg.method.startswith("della"):
            raise ValueError(f"epsilon (--epsilon) applies to the DELLA methods, not {cfg.method!r}")
        if not 0.0 <= _checks.real(cfg.epsilon, "epsilon") < 1.0:
            raise ValueError(f"epsilon (--epsilon) must be in [0, 1), got {cfg.epsilon}")
    if cfg.consensus is not None:
        if cfg.method not in ("ties", "dare-ties", "breadcrumbs-ties", "della"):
            raise ValueError(f"consensus (--consensus) applies to the sign-electing methods, not {cfg.method!r}")
        if cfg.consensus not in ("sum", "count"):
            raise ValueError(f"consensus (--consensus) must be 'sum' or 'count', got {cfg.consensus!r}")
    if cfg.rescale is not None:
        if cfg.method in ("task-arithmetic", "sce", "dppa"):
            raise ValueError(f"rescale (--rescale) does not apply to {cfg.method!r}")
        allowed = ("none", "l1", "l2", "linf") + (("q",) if cfg.method.startswith("dare") else ())
        if cfg.rescale not in allowed:
            raise ValueError(f"rescale (--rescale) for {cfg.method!r} must be one of {allowed}, got {cfg.rescale!r}")
    if cfg.method == "sce" and cfg.weights is not None:
        raise ValueError("sce weighs the fine-tunes itself (by delta variance): --weights does not apply")


def plan_merge(base: str, finetuned: list[str], cfg: MergeConfig) -> list[str]:
    if len(finetuned) < 1:
        raise ValueError("merge needs at least one fine-tuned model")
    if cfg.weights is not None and len(cfg.weights) != len(finetuned):
        raise ValueError(f"--weights has {len(cfg.weights)} values for {len(finetuned)} fine-tuned models")
    b = Checkpoint(base)
    names = b.names()
    selected = select_names(names, {n: b.infos[n].dtype for n in names}, preset=cfg.preset,
                            include=cfg.include, exclude=cfg.exclude)
    for i, path in enumerate(finetuned):
        f = Checkpoint(path)
        check_same_tensors(b, "base", f, f"fine-tuned #{i + 1} ({path})", selected)
        extra = [n for n in f.infos if n not in b]
        if extra:
            raise CheckpointMismatch(f"fine-tuned #{i + 1} ({path}) has tensors the base lacks: {extra[:5]}")
    if cfg.tensor_parameters is not None:
        cfg.tensor_parameters.check(selected)  # names only: fails before any tensor is read
    return selected


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None or t.dtype not in MERGE_DTYPES.values() else t.to(dtype)


def _out_layout(b: Checkpoint, cfg: MergeConfig):
    layout = layout_of(b)
    out = cfg.out_dtype or cfg.dtype
    if out is None:
        return layout
    for f in layout.files:
        f.entries = [replace(e, dtype=MERGE_DTYPES[out]) if e.dtype in MERGE_DTYPES.values() else e
                     for e in f.entries]
    return layout


def _job(group, base: str, finetuned: list[str], out: str, cfg: MergeConfig, overwrite: bool,
         show_progress: bool) -> dict[str, Any]:
    fixed_mmap_threshold()
    start = time.perf_counter()
    selected = set(plan_merge(base, finetuned, cfg))
    b = Checkpoint(base)
    fts = [Checkpoint(p) for p in finetuned]
    dev = torch.device(cfg.device)

    work = MERGE_DTYPES.get(cfg.dtype)
    final = MERGE_DTYPES.get(cfg.out_dtype or cfg.dtype)

    def compute(name: str) -> torch.Tensor:
        base_t = _cast(b.get(name), work)
        if name not in selected:
            return _cast(base_t, final)
        if cfg.tensor_parameters is not None:
            kwargs = cfg.tensor_parameters.merge_kwargs(name, cfg.seed)
        else:
            kwargs = dict(weights=list(cfg.weights) if cfg.weights else None, p=cfg.p, q=cfg.q, lam=cfg.lam,
                          normalize=cfg.normalize)
            kwargs.update({k: getattr(cfg, k) for k in ("gamma", "epsilon", "consensus", "rescale")
                           if getattr(cfg, k) is not None})
        merged = merge_tensor(base_t.to(dev), [_cast(f.get(name), work).to(dev) for f in fts], cfg.method,
                              seed=cfg.seed, name=name, **kwargs)
        return _cast(merged.cpu(), final)

    summary = write_model(group, out, _out_layout(b, cfg), compute, side_dir=b.directory, side_files=b.side_files(),
                          overwrite=overwrite, show_progress=show_progress, desc="merging")
    summary.update(selected=len(selected), seconds=time.perf_counter() - start, config=asdict(cfg))
    return summary


def merge_models(base: str | os.PathLike, finetuned: list[str | os.PathLike], out: str | os.PathLike,
                 config: MergeConfig | None = None, *, workers: int = 1, overwrite: bool = False,
                 show_progress: bool = False) -> dict[str, Any]:
    """Merge the fine-tunes into `out` (the base's layout; unselected tensors from the base)."""
    cfg = config or MergeConfig()
    base, out = os.fspath(base), os.fspath(out)
    finetuned = [os.fspath(p) for p in finetuned]
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if cfg.method == "dppa":
        from .merge_dppa import merge_dppa_models

        return merge_dppa_models(base, finetuned, out, cfg, workers=workers, overwrite=overwrite,
                                 show_progress=show_progress)
    plan_merge(base, finetuned, cfg)
    return run_workers(_job, (base, finetuned, out, cfg, overwrite, show_progress), workers=workers,
                       device=cfg.device, output=(out, overwrite))

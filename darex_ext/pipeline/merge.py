"""`darex merge`: one base and N fine-tunes in, one merged model out, streaming one tensor of
every model at a time (methods in darex_ext.algorithms.merge)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
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

__all__ = ["MergeConfig", "merge_models", "plan_merge"]


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

    def __post_init__(self):
        import math

        from ..ops import _checks
        from .compat import check_device, check_drop_rate, check_q

        if self.method not in MERGE_METHODS:
            raise ValueError(f"method must be one of {MERGE_METHODS}, got {self.method!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.method.startswith("dare") and self.p is None:
            raise ValueError(f"method {self.method!r} needs -p (the DARE drop rate)")
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
    return selected


def _job(group, base: str, finetuned: list[str], out: str, cfg: MergeConfig, overwrite: bool,
         show_progress: bool) -> dict[str, Any]:
    fixed_mmap_threshold()
    start = time.perf_counter()
    selected = set(plan_merge(base, finetuned, cfg))
    b = Checkpoint(base)
    fts = [Checkpoint(p) for p in finetuned]
    dev = torch.device(cfg.device)

    def compute(name: str) -> torch.Tensor:
        base_t = b.get(name)
        if name not in selected:
            return base_t
        merged = merge_tensor(base_t.to(dev), [f.get(name).to(dev) for f in fts], cfg.method,
                              weights=list(cfg.weights) if cfg.weights else None, p=cfg.p, q=cfg.q,
                              seed=cfg.seed, name=name, lam=cfg.lam, normalize=cfg.normalize)
        return merged.cpu()

    summary = write_model(group, out, layout_of(b), compute, side_dir=b.directory, side_files=b.side_files(),
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
    plan_merge(base, finetuned, cfg)
    return run_workers(_job, (base, finetuned, out, cfg, overwrite, show_progress), workers=workers,
                       device=cfg.device, output=(out, overwrite))

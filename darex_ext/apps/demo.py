"""`darex demo`: on a fresh machine, build a small base/fine-tuned model pair, prune the delta
at p = 0.99 with DARE and DAREx-q through the real pipeline (delta files, apply), and print
accuracy, size and throughput.

The toy task is pluggable (`DemoTask`); the default is `darex_ext.apps.demo_task` (the pretrain ->
fine-tune task that benchmarks/repro_darex.py also uses). DAREx-q's q is
chosen on the validation split (a grid over [1-p, 0.5], the empirical q of DAREx Algorithm 2);
accuracy is measured on the test split.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tempfile
import time
from typing import IO, Protocol

import torch
from torch import nn

from ..algorithms.prune_tensor import prune_tensor
from ..ops import prune_
from ..seeds import tensor_seed

__all__ = ["DemoTask", "default_task", "run_demo"]


class DemoTask(Protocol):
    name: str

    def base_state(self) -> dict[str, torch.Tensor]: ...

    def finetuned_state(self) -> dict[str, torch.Tensor]: ...

    def prunable(self) -> list[str]: ...

    def accuracy(self, state: dict[str, torch.Tensor], split: str) -> float: ...


class _ModelTask:
    """A DemoTask over an nn.Module pair and (x, y) splits."""

    def __init__(self, name: str, base: nn.Module, finetuned: nn.Module, splits: dict[str, tuple]):
        self.name = name
        self._model = copy.deepcopy(finetuned)
        self._base = {k: v.detach().clone() for k, v in base.state_dict().items()}
        self._ft = {k: v.detach().clone() for k, v in finetuned.state_dict().items()}
        self._splits = splits

    def base_state(self):
        return self._base

    def finetuned_state(self):
        return self._ft

    def prunable(self):
        return [k for k, v in self._ft.items() if v.dim() == 2]

    @torch.no_grad()
    def accuracy(self, state, split):
        self._model.load_state_dict(state)
        self._model.eval()
        x, y = self._splits[split]
        return float((self._model(x).argmax(1) == y).float().mean())


def default_task(quick: bool = False, seed: int = 0) -> _ModelTask:
    """The pretrain A -> fine-tune B task of `darex_ext.apps.demo_task` (shared with repro_darex)."""
    from . import demo_task

    cfg = demo_task.DemoConfig(seed=seed)
    if quick:
        cfg = demo_task.DemoConfig(seed=seed, hidden=256, n_train=4096, pretrain_steps=150, finetune_steps=100)
    models = demo_task.build_demo(cfg, with_adamr=False)
    d = models.data
    return _ModelTask("darex_ext.apps.demo_task (MLP, pretrain A -> fine-tune B)", models.base, models.finetuned,
                      {"val": (d.x_val, d.y_val), "test": (d.x_test, d.y_test)})


def _save_dir(state: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(path)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})


def _load_dir(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def _pruned_state(task, p: float, q, seed: int) -> dict[str, torch.Tensor]:
    base, ft = task.base_state(), task.finetuned_state()
    out = dict(ft)
    for name in task.prunable():
        delta = torch.sub(ft[name], base[name])
        method = "dare" if q is None else "darex-q"
        out[name] = base[name] + prune_tensor(delta, method, p, q=q, seed=tensor_seed(seed, name))
    return out


def _choose_q(task, p: float, seed: int) -> tuple[float, float]:
    grid = sorted({round(1.0 - p, 6)} | {round(1.0 - p + i * (0.5 - (1.0 - p)) / 24, 6) for i in range(25)})
    scored = [(task.accuracy(_pruned_state(task, p, q, seed), "val"), -q, q) for q in grid]
    best = max(scored)
    return best[2], best[0]


def _kernel_throughput(numel: int = 1 << 24, repeat: int = 3) -> float:
    x = torch.randn(numel)
    prune_(x, 0.99, seed=0)
    best = float("inf")
    for r in range(repeat):
        x = torch.randn(numel)
        t0 = time.perf_counter()
        prune_(x, 0.99, seed=r)
        best = min(best, time.perf_counter() - t0)
    return 2 * x.numel() * x.element_size() / best / 1e9  # read + write


def run_demo(*, p: float = 0.99, seed: int = 0, quick: bool = False, keep: str | None = None,
             out: IO[str] | None = None, task: DemoTask | None = None) -> dict:
    """Run the demo and print its table; returns the numbers."""
    from ..pipeline.apply import apply_delta
    from ..pipeline.prune import PruneConfig, prune_model

    out = out or sys.stdout
    t_start = time.perf_counter()
    print("building the model pair (pretrain on task A, fine-tune on task B) ...", file=out, flush=True)
    task = task or default_task(quick, seed)
    work = keep or tempfile.mkdtemp(prefix="darex-demo-")
    if keep:
        os.makedirs(keep, exist_ok=True)
    try:
        base_dir, ft_dir = os.path.join(work, "base"), os.path.join(work, "finetuned")
        for d in (base_dir, ft_dir):
            if os.path.exists(d):
                shutil.rmtree(d)
        _save_dir(task.base_state(), base_dir)
        _save_dir(task.finetuned_state(), ft_dir)
        include = tuple("^" + re.escape(n) + "$" for n in task.prunable())
        dense_bytes = os.path.getsize(os.path.join(ft_dir, "model.safetensors"))
        n_params = sum(task.finetuned_state()[n].numel() for n in task.prunable())
        q_best, q_val = _choose_q(task, p, seed)

        rows = [("base (pretrained)", "-", task.accuracy(task.base_state(), "test"), None, None),
                ("fine-tuned", "-", task.accuracy(task.finetuned_state(), "test"), dense_bytes, None)]
        results = {}
        for label, method, q in (("DARE", "dare", None), ("DAREx-q", "darex-q", q_best)):
            delta_dir = os.path.join(work, f"delta-{method}")
            model_dir = os.path.join(work, f"model-{method}")
            cfg = PruneConfig(method=method, p=p, q=q, seed=seed, format="seeded", include=include)
            summary = prune_model(base_dir, ft_dir, delta_dir, cfg, overwrite=True)
            apply_delta(base_dir, delta_dir, model_dir, overwrite=True)
            acc = task.accuracy(_load_dir(model_dir), "test")
            results[method] = {"accuracy": acc, "bytes": summary["bytes"], "seconds": summary["seconds"], "q": q}
            rows.append((label, f"{q if q is not None else 1 - p:.3g}", acc, summary["bytes"], summary["seconds"]))
        gbps = _kernel_throughput(1 << 22 if quick else 1 << 24)

        print(f"\ndarex demo: {task.name}, {n_params:,} prunable parameters, p = {p}, seed = {seed}", file=out)
        print(f"DAREx-q's q chosen on the validation split: {q_best:.3g} (val accuracy {q_val:.3f})\n", file=out)
        head = f"{'model':<20} {'q':>7} {'test acc':>9} {'stored':>11} {'vs dense':>9} {'prune+write':>12}"
        print(head, file=out)
        print("-" * len(head), file=out)
        for label, q, acc, size, secs in rows:
            size_s = f"{size / 1e3:,.1f} kB" if size else ""
            ratio = f"{100 * size / dense_bytes:.1f}%" if size else ""
            secs_s = f"{secs * 1e3:.0f} ms" if secs is not None else ""
            print(f"{label:<20} {q:>7} {acc:>9.3f} {size_s:>11} {ratio:>9} {secs_s:>12}", file=out)
        print(f"\nstored = the seeded delta file (kept values + seeds) vs the dense fine-tuned checkpoint; "
              f"prune_ kernel throughput here: {gbps:.1f} GB/s (read + write, fp32, p = 0.99)", file=out)
        print(f"total demo time {time.perf_counter() - t_start:.1f} s" + (f"; files kept in {work}" if keep else ""),
              file=out)
        return {"q": q_best, "results": results, "dense_bytes": dense_bytes, "kernel_gbps": gbps}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

"""`darex demo --swap`: one loaded base, the DARE and DAREx-q deltas of the demo held next to it
(darex_ext.serving.DeltaBank), the live model switched between them in place.

Builds the demo's model pair (darex_ext.apps.demo), writes both deltas at p with
`darex prune --format seeded` (the pipeline), loads the base once, adds the two delta
directories, switches base -> DARE -> DAREx-q -> ... and prints each one's test accuracy measured
on the live model, the switch time, the memory, and two checks: every activated model equals
`darex apply`'s output bit for bit, and deactivate gives the base back bit for bit.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import IO

import torch

from ..serving import DeltaBank
from .demo import _choose_q, _load_dir, _save_dir, default_task

__all__ = ["run_swap_demo"]


def _bits(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return {k: v.detach().contiguous().view(ints[v.element_size()]).clone() for k, v in state.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_swap_demo(*, p: float = 0.99, seed: int = 0, quick: bool = False, switches: int = 20,
                  out: IO[str] | None = None, task=None) -> dict:
    """Run the swap demo and print its table; returns the numbers."""
    from ..pipeline.apply import apply_delta
    from ..pipeline.prune import PruneConfig, prune_model

    out = out or sys.stdout
    t_start = time.perf_counter()
    print("building the model pair (pretrain on task A, fine-tune on task B) ...", file=out, flush=True)
    task = task or default_task(quick, seed)
    work = tempfile.mkdtemp(prefix="darex-swap-")
    try:
        base_dir, ft_dir = os.path.join(work, "base"), os.path.join(work, "finetuned")
        _save_dir(task.base_state(), base_dir)
        _save_dir(task.finetuned_state(), ft_dir)
        include = tuple("^" + re.escape(n) + "$" for n in task.prunable())
        q_best, _ = _choose_q(task, p, seed)
        deltas, applied = {}, {}
        for label, method, q in (("DARE", "dare", None), ("DAREx-q", "darex-q", q_best)):
            d = os.path.join(work, f"delta-{method}")
            prune_model(base_dir, ft_dir, d, PruneConfig(method=method, p=p, q=q, seed=seed, format="seeded",
                                                         include=include), overwrite=True)
            apply_delta(base_dir, d, os.path.join(work, f"model-{method}"), overwrite=True)
            deltas[label], applied[label] = d, _bits(_load_dir(os.path.join(work, f"model-{method}")))

        # The live model: the demo's network holding the base, loaded once.
        model = copy.deepcopy(task._model)
        model.load_state_dict(_load_dir(base_dir))
        model.eval()
        x, y = task._splits["test"]
        base_bits = _bits(model.state_dict())
        t0 = time.perf_counter()
        bank = DeltaBank(model)
        for label, d in deltas.items():
            bank.add(label, d)
        add_s = time.perf_counter() - t0

        @torch.no_grad()
        def accuracy() -> float:
            return float((model(x).argmax(1) == y).float().mean())

        acc = {"base": accuracy(), "fine-tuned": task.accuracy(task.finetuned_state(), "test")}
        exact = {}
        times: dict[str, list[float]] = {label: [] for label in deltas}
        order = list(deltas)
        for i in range(max(2, switches)):
            label = order[i % len(order)]
            t0 = time.perf_counter()
            bank.switch(label)
            times[label].append(time.perf_counter() - t0)
            if label not in acc:
                acc[label] = accuracy()
                exact[label] = _same(_bits(model.state_dict()), applied[label])
            elif accuracy() != acc[label]:
                exact[label] = False
        t0 = time.perf_counter()
        bank.deactivate()
        deact_s = time.perf_counter() - t0
        restored = _same(_bits(model.state_dict()), base_bits)
        load_s = []
        for _ in range(5):  # the alternative: load `darex apply`'s model from disk into the live model
            t0 = time.perf_counter()
            model.load_state_dict(_load_dir(os.path.join(work, "model-darex-q")))
            load_s.append(time.perf_counter() - t0)
        model.load_state_dict(_load_dir(base_dir))
        mem = bank.memory()

        n_params = sum(v.numel() for v in task.finetuned_state().values())
        print(f"\ndarex demo --swap: {task.name}, {n_params:,} parameters, p = {p}, seed = {seed}", file=out)
        print(f"one base loaded; DARE and DAREx-q (q = {q_best:.3g}) deltas added in {add_s * 1e3:.0f} ms; "
              f"{max(2, switches)} switches\n", file=out)
        head = f"{'active':<20} {'test acc':>9} {'switch ms':>10} {'delta kB':>9} {'= darex apply':>14}"
        print(head, file=out)
        print("-" * len(head), file=out)
        print(f"{'base':<20} {acc['base']:>9.3f}", file=out)
        print(f"{'fine-tuned (dense)':<20} {acc['fine-tuned']:>9.3f}", file=out)
        for label in order:
            med = statistics.median(times[label]) * 1e3
            print(f"{label:<20} {acc[label]:>9.3f} {med:>10.2f} {mem['deltas'][label] / 1e3:>9.1f} "
                  f"{'bit for bit' if exact[label] else 'NO':>14}", file=out)
        print(f"\nswitch = deactivate the active delta + activate the next, in place (median); deactivate "
              f"{deact_s * 1e3:.2f} ms; base restored bit for bit: {'yes' if restored else 'NO'}", file=out)
        print(f"loading the DAREx-q model from disk instead (safetensors + load_state_dict): "
              f"{statistics.median(load_s) * 1e3:.2f} ms", file=out)
        print(f"memory: base {mem['base'] / 1e6:.2f} MB + deltas {mem['deltas_total'] / 1e6:.3f} MB "
              f"({100 * mem['deltas_total'] / mem['base']:.1f}% of base); total demo time "
              f"{time.perf_counter() - t_start:.1f} s", file=out)
        return {"q": q_best, "accuracy": acc, "switch_s": times, "exact": exact, "restored": restored,
                "memory": mem, "load_s": load_s}
    finally:
        shutil.rmtree(work, ignore_errors=True)

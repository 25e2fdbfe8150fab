"""Reproduce the DAREx paper's central claim on a model trained here, in under a minute on a CPU.

An MLP is pretrained on one synthetic task and fine-tuned on a related one with a large
learning rate (darex_ext/apps/demo_task.py); its weight deltas are then pruned at p = 0.99 with
every method (darex_ext/apps/demo_repro.py): plain DARE, DAREx-q with an empirical q (labeled
validation) and with an analytic per-layer q (unlabeled), magnitude pruning, and DARE on an
AdamR fine-tune. Prints the table and saves a plot of accuracy against q.

    python benchmarks/repro_darex.py --plot darex_q.png [--markdown] [--p 0.99] [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from darex_ext.apps.demo_repro import compare_methods, q_curve
from darex_ext.apps.demo_task import DemoConfig, build_demo

CURVE_QS = [0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0]


def _table(result, markdown: bool) -> str:
    ft = result.row("fine-tuned (no pruning)").accuracy
    header = ["method", "test accuracy", "loss vs fine-tuned", "q", "note"]
    lines = []
    for r in result.rows:
        loss = "-" if r.method.startswith(("fine-tuned", "AdamR fine-tune (no")) else f"{100 * (ft - r.accuracy):+.1f} pt"
        lines.append([r.method, f"{100 * r.accuracy:.1f}%", loss, r.q, r.note])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|:---|---:|---:|:---|:---|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*line) for line in lines])


def _plot(path: str, curve, result, p: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    qs, accs = zip(*curve)
    ax.plot(qs, [100 * a for a in accs], "o-", label=f"DARE with rescale 1/q, p = {p:g}")
    ax.axhline(100 * result.row("fine-tuned (no pruning)").accuracy, color="g", ls="--", label="fine-tuned, no pruning")
    ax.axhline(100 * result.row("pretrained (delta dropped)").accuracy, color="gray", ls=":", label="pretrained")
    ax.axvline(1 - p, color="r", ls=":", label="q = 1-p (plain DARE)")
    ax.axvline(result.empirical.best, color="b", ls="-.", label=f"find_q: q = {result.empirical.best:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("q (kept entries are divided by q)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("DAREx-q on the demo MLP: accuracy against q")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=float, default=0.99, help="drop rate (default 0.99)")
    ap.add_argument("--seeds", type=int, default=3, help="mask seeds averaged per evaluation")
    ap.add_argument("--plot", default=None, help="save the accuracy-vs-q plot (PNG) here")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table with run info")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, init and training")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 is best on a shared machine: the matrices are small)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seeds = tuple(range(args.seeds))
    t0 = time.perf_counter()
    models = build_demo(DemoConfig(seed=args.seed))
    t_train = time.perf_counter() - t0
    result = compare_methods(models, args.p, seeds)
    curve = q_curve(models, args.p, CURVE_QS, seeds) if args.plot else []
    elapsed = time.perf_counter() - t0
    if args.markdown:
        print(f"- command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
        print(f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cpus, "
              f"torch threads {torch.get_num_threads()}, torch {torch.__version__}")
        print(f"- p = {args.p}, mask seeds {list(seeds)}, data/training seed {args.seed}; "
              f"time: {t_train:.1f} s training, {elapsed:.1f} s total")
        print()
    print(_table(result, args.markdown))
    if args.plot:
        _plot(args.plot, curve, result, args.p)
        print(f"\nplot: {args.plot}")
        print("q curve: " + ", ".join(f"{q:g}: {100 * a:.1f}%" for q, a in curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())

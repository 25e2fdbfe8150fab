"""The model-level subcommands of `darex`: prune, apply, merge, inspect, demo.

Each `add_*` declares a subparser; each handler gets the parsed arguments and its parser (a bad
combination of options is a usage error, exit 2, via `parser.error`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["add_model_commands", "MODEL_COMMANDS"]


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}") from None
    if not 0 <= value < (1 << 64):
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**64), got {text}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--workers must be >= 1")
    return value


def _number(text: str, option: str, check) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    try:
        return check(value, option)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _drop_rate(text: str) -> float:
    from ..pipeline.compat import check_drop_rate

    return _number(text, "-p", check_drop_rate)


def _q(text: str) -> float:
    from ..pipeline.compat import check_q

    return _number(text, "--q", check_q)


def _finite_number(value: float, option: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value}")
    return value


def _finite(option: str):
    return lambda text: _number(text, option, _finite_number)


def _device(text: str) -> str:
    index = text[len("cuda:"):] if text.startswith("cuda:") else None
    if text not in ("cpu", "cuda") and not (index is not None and index.isdigit()):
        raise argparse.ArgumentTypeError(f"--device must be cpu, cuda or cuda:N, got {text!r}")
    return text


def _common(p: argparse.ArgumentParser, *, select: bool = True, default_preset: str = "all",
            output_required: bool = True) -> None:
    p.add_argument("-o", "--output", required=output_required, metavar="OUT", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    if select:
        p.add_argument("--preset", choices=("all", "encoder", "decoder"), default=default_preset,
                       help="which tensors: all | encoder (all but the task head) | decoder (only mlp and "
                            f"self_attn; embeddings, norms, lm_head kept) (default: {default_preset})")
        p.add_argument("--include", action="append", default=[], metavar="RE",
                       help="only tensors whose name matches RE (repeatable)")
        p.add_argument("--exclude", action="append", default=[], metavar="RE",
                       help="never tensors whose name matches RE (repeatable)")
    p.add_argument("--seed", type=_seed, default=0, help="base seed; tensor seeds are tensor_seed(seed, name)")
    p.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="split tensors over N processes (gloo on CPU, NCCL on GPU); under torchrun, one per rank")
    p.add_argument("--device", type=_device, default="cpu", help="cpu | cuda | cuda:N (compute device)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_commands(sub) -> None:
    p = sub.add_parser("prune", help="prune a fine-tuned model's delta (DARE, DAREx-q, magnitude, WANDA, DPPA)",
                       description="Prune FINETUNED - BASE and write a model (--format dense) or a compact delta "
                                   "(OUT/delta.safetensors).")
    p.add_argument("base", metavar="BASE", help="base model directory or .safetensors file")
    p.add_argument("finetuned", metavar="FINETUNED", help="fine-tuned model directory or .safetensors file")
    p.add_argument("--method", choices=("dare", "darex-q", "magnitude", "wanda", "dppa"), default="dare")
    p.add_argument("-p", type=_drop_rate, default=0.9, help="drop rate in [0, 1) (default 0.9)")
    qs = p.add_mutually_exclusive_group()
    qs.add_argument("--q", type=_q, default=None, help="rescale kept entries by 1/Q (darex-q; magnitude/wanda)")
    qs.add_argument("--q-mode", choices=("analytic",), default=None,
                    help="analytic: per-row q from DAREx Algorithm 3 (needs --stats)")
    p.add_argument("--stats", default=None, metavar="FILE",
                   help="safetensors of per-module input statistics: '<module>.x_mean' (analytic q), "
                        "'<module>.act_norm' (wanda)")
    p.add_argument("--format", choices=("dense", "seeded", "bitmask", "csr"), default="dense",
                   help="dense: a model directory; others: OUT/delta.safetensors + copied config")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan, write nothing")
    _common(p, output_required=False)

    p = sub.add_parser("apply", help="rebuild a model from a base and a delta",
                       description="Write BASE + DELTA (a directory from `darex prune --format seeded|bitmask|csr`).")
    p.add_argument("base", metavar="BASE")
    p.add_argument("delta", metavar="DELTA", help="delta directory (or its delta.safetensors)")
    _common(p, select=False)

    p = sub.add_parser("merge", help="merge fine-tunes of one base (task arithmetic, TIES, DARE-TIES, DARE-linear)",
                       description="Merge FT1 FT2 ... into BASE, one tensor of every model at a time.")
    p.add_argument("base", metavar="BASE")
    p.add_argument("finetuned", metavar="FT", nargs="+")
    p.add_argument("--method", choices=("task-arithmetic", "ties", "dare-ties", "dare-linear"), default="ties")
    p.add_argument("--weights", type=_finite("--weights"), nargs="+", default=None, help="one weight per fine-tune")
    p.add_argument("-p", type=_drop_rate, default=None, help="drop rate (TIES trim, default 0.8; required for DARE)")
    p.add_argument("--q", type=_q, default=None, help="DARE variants: rescale by 1/Q instead of 1/(1-p)")
    p.add_argument("--lambda", dest="lam", type=_finite("--lambda"), default=1.0, help="scale of the merged delta")
    norm = p.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="divide by the summed weights (default: TIES only)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    _common(p)

    p = sub.add_parser("inspect", help="per-tensor table of a delta or model",
                       description="Print format, density, bytes per parameter and statistics per tensor.")
    p.add_argument("path", metavar="PATH", help="delta directory / file, or a model (with --base: its delta)")
    p.add_argument("--base", default=None, help="for a model PATH: show delta statistics against BASE")
    p.add_argument("--limit", type=int, default=0, help="show at most N tensors (0: all)")
    p.add_argument("-p", type=float, default=0.99,
                   help="drop rate the recommendation is for (default 0.99; a delta's own p wins)")

    p = sub.add_parser("demo", help="build a small model pair, prune it with DARE and DAREx-q, print a table",
                       description="Pretrain and fine-tune a small model on a toy task, prune the delta at "
                                   "p = 0.99 with DARE and DAREx-q, and compare accuracy, size and throughput.")
    p.add_argument("-p", type=float, default=0.99, help="drop rate (default 0.99)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quick", action="store_true", help="smaller model and fewer steps (seconds)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the checkpoints in DIR")

    for name in MODEL_COMMANDS:
        sub.choices[name].set_defaults(subparser=sub.choices[name])


def _print_summary(what: str, summary: dict, out: str) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        return
    secs = summary.get("seconds", 0.0)
    size = summary.get("bytes", 0)
    print(f"{what}: {summary.get('tensors', summary.get('deltas', 0))} tensors -> {out} "
          f"({size / 1e6:.1f} MB, {secs:.2f} s)")


def _usable_device(device: str) -> None:
    """Refuse a device this build or machine cannot compute on before anything is created: a
    failure of the environment, not of the command line (exit 1, one line)."""
    from ..pipeline.compat import check_device

    check_device(device)


def _prune(args, parser) -> int:
    from ..pipeline import PruneConfig, plan_prune, prune_model

    _usable_device(args.device)
    try:
        cfg = PruneConfig(method=args.method, p=args.p, q=args.q, q_mode=args.q_mode or "fixed", seed=args.seed,
                          format=args.format, preset=args.preset, include=tuple(args.include),
                          exclude=tuple(args.exclude), device=args.device, stats=args.stats)
    except ValueError as exc:
        parser.error(str(exc))
    if args.dry_run:
        plan = plan_prune(args.base, args.finetuned, cfg)
        print(f"plan: prune {len(plan.selected)} of {plan.tensors} tensors ({plan.params_selected:,} parameters) "
              f"with {cfg.method} p={cfg.p}" + (f" q={cfg.q}" if cfg.q is not None else "")
              + f", format {cfg.format}, {args.workers} worker(s); nothing written")
        for note in plan.notes:
            print(f"note: {note}")
        for name in plan.selected:
            print(f"  {name}")
        return 0
    if args.output is None:
        parser.error("the following arguments are required: -o/--output")
    summary = prune_model(args.base, args.finetuned, args.output, cfg, workers=args.workers,
                          overwrite=args.overwrite, show_progress=not args.quiet)
    for note in summary.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    _print_summary(f"pruned {summary['selected']} of {summary['tensors']} tensors", summary, args.output)
    return 0


def _apply(args, parser) -> int:
    from ..pipeline import apply_delta

    _usable_device(args.device)
    summary = apply_delta(args.base, args.delta, args.output, workers=args.workers, device=args.device,
                          overwrite=args.overwrite, show_progress=not args.quiet)
    _print_summary("applied", summary, args.output)
    return 0


def _merge(args, parser) -> int:
    from ..pipeline import MergeConfig, merge_models

    _usable_device(args.device)
    try:
        cfg = MergeConfig(method=args.method, weights=tuple(args.weights) if args.weights else None, p=args.p,
                          q=args.q, lam=args.lam, normalize=args.normalize, seed=args.seed, preset=args.preset,
                          include=tuple(args.include), exclude=tuple(args.exclude), device=args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if cfg.weights is not None and len(cfg.weights) != len(args.finetuned):
        parser.error(f"--weights has {len(cfg.weights)} values for {len(args.finetuned)} fine-tuned models")
    summary = merge_models(args.base, args.finetuned, args.output, cfg, workers=args.workers,
                           overwrite=args.overwrite, show_progress=not args.quiet)
    _print_summary(f"merged {len(args.finetuned)} fine-tunes ({args.method})", summary, args.output)
    return 0


def _inspect(args, parser) -> int:
    from ..pipeline.inspect import inspect_path

    if not 0.0 < args.p < 1.0:
        parser.error(f"-p must be in (0, 1), got {args.p}")
    inspect_path(args.path, base=args.base, limit=args.limit, p=args.p, out=sys.stdout)
    return 0


def _demo(args, parser) -> int:
    if not 0.0 <= args.p < 1.0:
        parser.error(f"-p must be in [0, 1), got {args.p}")
    from .demo import run_demo

    run_demo(p=args.p, seed=args.seed, quick=args.quick, keep=args.keep, out=sys.stdout)
    return 0


MODEL_COMMANDS = {"prune": _prune, "apply": _apply, "merge": _merge, "inspect": _inspect, "demo": _demo}

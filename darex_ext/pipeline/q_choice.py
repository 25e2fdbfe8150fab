"""The q of `darex prune --method darex-q`, chosen before any tensor is written.

- ``--q Q``: one q for every tensor.
- ``--q auto --calibration TEXT``: the label-free search (``find_q`` in the published mode on
  the published output-change objective, :data:`REFERENCE_OBJECTIVES`) over a global q.
- ``--q-mode analytic``: analytic q per Linear from input means (``--stats`` file, or computed
  on ``--calibration`` text with the fine-tuned model as published), by the same
  ``analytic_q_table`` that ``analytic_q_for_model`` uses, so the CLI and the API give identical
  q for weights and biases; ``--eta auto`` picks eta by the label-free search as well.
- ``--q-mode learned --calibration TEXT``: one q per Linear trained on the output change
  (``learn_layer_q``, the published ``perlayer_opt.py``).

Every choice comes with plan lines: what each group of tensors got, and which selected tensors
got no q from the chosen method (they fall back to 1/(1-p), reported, never silent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..algorithms.analytic_q import AnalyticQMap, analytic_q_table
from .checkpoint import Checkpoint

__all__ = ["QChoice", "choose_q", "parse_grid", "learned_table", "Q_MODES", "LEARNED_BATCH"]

Q_MODES = ("fixed", "auto", "analytic", "learned")


@dataclass
class QChoice:
    """q = one number for every tensor, or table = name -> q (float or per-row tensor)."""

    q: float | None = None
    table: dict | None = None
    notes: list[str] = field(default_factory=list)


def parse_grid(text: str, option: str) -> tuple[float, float, float]:
    """"LO:HI:STEP" -> (lo, hi, step), finite, lo <= hi, step > 0."""
    parts = text.split(":")
    try:
        lo, hi, step = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"{option} must be LO:HI:STEP (three numbers), got {text!r}") from None
    if not all(math.isfinite(v) for v in (lo, hi, step)) or step <= 0 or hi < lo or lo <= 0:
        raise ValueError(f"{option} must be finite with 0 < LO <= HI and STEP > 0, got {text!r}")
    return lo, hi, step


def _fmt(q) -> str:
    if isinstance(q, torch.Tensor):
        return f"per-row q in [{float(q.min()):.4g}, {float(q.max()):.4g}]"
    return f"q = {q:.6g}"


def _analytic_table(base: Checkpoint, finetuned: Checkpoint, selected: list[str], x_means: dict, cfg,
                    eta: float) -> AnalyticQMap:
    chosen = set(selected)
    layers = []
    used = set()
    for module, x_mean in x_means.items():
        w = f"{module}.weight"
        if w not in chosen or len(finetuned.infos[w].shape) != 2 or finetuned.infos[w].shape[1] != x_mean.numel():
            continue
        b = f"{module}.bias"
        bias = b if b in chosen and b in base.infos else None

        def load(w=w, bias=bias):
            d_w = torch.sub(finetuned.get(w).to(torch.device(cfg.device)), base.get(w).to(torch.device(cfg.device)))
            d_b = None if bias is None else torch.sub(finetuned.get(bias), base.get(bias)).to(d_w.device)
            return d_w, d_b

        layers.append((module, w, bias, load))
        used.update(n for n in (w, bias) if n)
    others = [n for n in selected if n not in used and finetuned.infos[n].dtype.is_floating_point]
    if not layers:
        raise ValueError("--q-mode analytic: no selected Linear weight has an x_mean in the statistics "
                         "(names '<module>.x_mean' must match '<module>.weight')")
    return analytic_q_table(layers, x_means, others, cfg.p, eta=eta, stop_iter=cfg.stop_iter,
                            precision=cfg.precision, per_row=cfg.per_row, two_sided=cfg.two_sided)


def _stats_x_means(path: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return {k[: -len(".x_mean")]: f.get_tensor(k) for k in f.keys() if k.endswith(".x_mean")}


class _Models:
    """The two models and the calibration batches, loaded once, only when a mode needs them."""

    def __init__(self, base_path: str, ft_path: str, cfg):
        from .calibration import load_model, model_kind, read_text

        self._text = read_text(cfg.calibration, "--calibration")
        self._cfg, self._ft_path = cfg, ft_path
        self.ft = load_model(ft_path, "FINETUNED", cfg.device)
        self.base = load_model(base_path, "BASE", cfg.device)
        self.kind = model_kind(self.ft)
        self.batches = self.small_batches(16)

    def small_batches(self, size: int) -> list:
        from .calibration import calibration_batches

        return calibration_batches(self._ft_path, self._text, samples=self._cfg.samples, seq_len=self._cfg.seq_len,
                                   device=self._cfg.device, hidden_states=self.kind == "encoder", batch_size=size,
                                   unit=self._cfg.calibration_unit, kind=self.kind)

    def stats_x_means(self) -> dict[str, torch.Tensor]:
        from ..algorithms.input_stats import collect_input_stats

        return {name: s.mean for name, s in collect_input_stats(self.ft, self.batches).items()}

    def objective(self, selected: list[str], p: float):
        from ..algorithms.q_search import output_change_objective

        chosen = set(selected)
        return output_change_objective(self.ft, self.base, self.batches, p, preset=self.kind,
                                       include=lambda n: n in chosen, mask=self._cfg.mask)


def _search(evaluate, grid, kind: str):
    from ..algorithms.q_search import find_q

    lo, hi, step = grid
    return find_q(evaluate, lo, hi, step, maximize=False, variant="decoder" if kind == "decoder" else "encoder")


def choose_q(base_path: str, ft_path: str, cfg, selected: list[str]) -> QChoice:
    """The q of every selected tensor for `cfg` (a PruneConfig with method darex-q)."""
    mode = cfg.q_mode
    if mode == "fixed":
        return QChoice(q=cfg.q)
    base, finetuned = Checkpoint(base_path), Checkpoint(ft_path)
    models = _Models(base_path, ft_path, cfg) if cfg.calibration is not None else None
    if mode == "auto":
        from ..algorithms.q_search import REFERENCE_OBJECTIVES

        grid = cfg.q_grid or (1.0 - cfg.p, min(1.0, 1.0 - cfg.p + 0.5), (min(1.0, 1.0 - cfg.p + 0.5) - (1.0 - cfg.p)) / 10)
        search = _search(models.objective(selected, cfg.p), grid, models.kind)
        setup = REFERENCE_OBJECTIVES[models.kind]
        return QChoice(q=float(search.best), notes=[
            f"q: auto = {search.best:.6g} (label-free: output change on the calibration text, {models.kind} "
            f"objective, seeds {list(setup['seeds'])}; {len(search.history)} evaluations)",
            f"all {len(selected)} selected tensors: q = {search.best:.6g}"])
    if mode == "analytic":
        x_means = _stats_x_means(cfg.stats) if cfg.stats is not None else models.stats_x_means()
        eta_note = f"eta {cfg.eta}"
        eta = cfg.eta
        if eta == "auto":
            from ..algorithms.q_search import dare_model, output_change

            chosen = set(selected)

            def by_eta(e: float) -> float:
                table = _analytic_table(base, finetuned, selected, x_means, cfg, e)
                return output_change(models.ft, lambda s: dare_model(models.ft, models.base, cfg.p, table, seed=s,
                                                                     include=lambda n: n in chosen, mask=cfg.mask),
                                     models.batches, **_objective_args(models.kind))

            search = _search(by_eta, cfg.eta_grid or (0.1, 1.5, 0.1), models.kind)
            eta = float(search.best)
            eta_note = f"eta auto = {eta:.6g} (label-free, {len(search.history)} evaluations)"
        table = _analytic_table(base, finetuned, selected, x_means, cfg, float(eta))
        return _table_choice(table, selected, cfg, f"q: analytic ({cfg.precision} precision, {eta_note}, "
                                                   f"{'per row' if cfg.per_row else 'layer mean'}"
                                                   f"{', two-sided' if cfg.two_sided else ''})")
    if mode == "learned":
        batches = models.small_batches(LEARNED_BATCH)
        others = [n for n in selected if finetuned.infos[n].dtype.is_floating_point]
        table, train, val = learned_table(models.ft, models.base, batches, cfg.p, cfg.seed, selected, others,
                                          mask=cfg.mask)
        return _table_choice(table, selected, cfg, f"q: learned per layer (label-free output change, "
                                                   f"{train} training and {val} validation batches)")
    raise ValueError(f"q_mode must be one of {Q_MODES}, got {mode!r}")


LEARNED_BATCH = 8  # inputs per training step, the published batch size


def learned_table(ft, base, batches: list, p: float, seed: int, selected, others, *, mask: str = "skip") -> tuple:
    """``learn_layer_q`` as `--q-mode learned` runs it: the last fifth of `batches` validates
    (early stopping), the rest trains; the Linear weights and biases in `selected` get their
    layer's q and every name in `others` without one the mean of the layer q's (as analytic q).
    Returns (table, training batches, validation batches)."""
    from ..algorithms.analytic_q_reference import reference_mean_of_layers
    from ..algorithms.learned_q import learn_layer_q

    chosen = set(selected)
    val = max(1, len(batches) // 5) if len(batches) > 1 else 0
    train, held = (batches[:-val], batches[-val:]) if val else (batches, None)
    table = learn_layer_q(ft, base, train, p, val_batches=held, seed=seed, include=lambda n: n in chosen, mask=mask)
    rest = [n for n in others if n not in table]
    if rest and table.layer_q:
        table.fill = reference_mean_of_layers(table.layer_q.values())
        for name in rest:
            table.put(name, table.fill, "mean of layer q's")
    return table, len(train), val


def _objective_args(kind: str) -> dict:
    from ..algorithms.q_search import REFERENCE_OBJECTIVES

    return dict(REFERENCE_OBJECTIVES[kind])


def _table_choice(table, selected: list[str], cfg, title: str) -> QChoice:
    notes = [title]
    sources = getattr(table, "sources", {})
    groups: dict[str, list[str]] = {}
    for name in selected:
        if name in table:
            groups.setdefault(sources.get(name, "given"), []).append(name)
    for source, names in groups.items():
        values = [table[n] for n in names]
        shown = _fmt(values[0]) if len(names) == 1 else (
            f"q in [{min(_scalar_min(v) for v in values):.4g}, {max(_scalar_max(v) for v in values):.4g}]")
        notes.append(f"{len(names)} tensors ({source}): {shown}")
    missing = [n for n in selected if n not in table]
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        notes.append(f"{len(missing)} selected tensors got no q from this mode and use 1/(1-p) = "
                     f"{1 / (1 - cfg.p):.4g}: {shown}")
    return QChoice(table=dict(table), notes=notes)


def _scalar_min(v) -> float:
    return float(v.min()) if isinstance(v, torch.Tensor) else float(v)


def _scalar_max(v) -> float:
    return float(v.max()) if isinstance(v, torch.Tensor) else float(v)

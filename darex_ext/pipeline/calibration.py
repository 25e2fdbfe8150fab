"""Calibration text for the CLI: model inputs, per-Linear input statistics, label-free q.

Two ways to cut the text into model inputs (``--calibration-unit``):

- ``window`` (the published way, vengdeng/DAREx ``utils/getwx.py``, ``utils/outputchange.py``):
  the whole text tokenized in one call, then `samples` windows of `seq_len` tokens at offsets
  drawn with Python's ``random.seed(0)`` (``randint(0, L - seq_len - 1)``). Written for decoder
  LMs on C4-like text: a window starts mid-sentence and carries no special tokens.
- ``line``: every non-empty line is one example, tokenized on its own with the tokenizer's
  special tokens and cut at `seq_len`; `samples` lines are drawn when there are more. This is
  how an encoder classifier sees its inputs. On all-MiniLM-L6-v2 fine-tuned for classification
  (benchmarks/repro_real.py) windows lack the [CLS] token the classifier reads, and the
  output-change minimum moves from the accurate q (about 0.02) to 0.3; lines put it back.
  Lines are grouped by token count, so no batch is padded and every consumer (statistics,
  objectives, learned q) sees only real tokens.

``auto`` (the default) takes lines for encoders and windows for decoders. Both draw with a
``random.Random(seed)`` of their own, so the global random state is never touched. The default
`samples` gives both units about the same token budget: 50 windows of 128 tokens, 256 lines.

Models are loaded with transformers from a model directory (config.json), in float32 on the
chosen device, with the class config.json names, so module names match checkpoint names.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CalibrationError", "read_text", "load_model", "model_kind", "calibration_batches", "resolve_unit",
           "write_stats", "STATS_KEYS", "UNITS", "DEFAULT_SAMPLES"]

STATS_KEYS = ("x_mean", "act_norm")
UNITS = ("auto", "line", "window")
DEFAULT_SAMPLES = {"window": 50, "line": 256}
_BATCH = 16  # inputs per forward pass


class CalibrationError(ValueError):
    """Bad calibration input; the message names the option (e.g. --calibration)."""


def read_text(path: str, option: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{option} must be a path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise CalibrationError(f"{option}: no such file: {os.fspath(path)!r}")
    with open(path, encoding="utf-8", errors="strict") as f:
        text = f.read()
    if not text.strip():
        raise CalibrationError(f"{option}: {os.fspath(path)!r} holds no text")
    return text


def _model_class(config):
    import transformers

    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def load_model(path: str, option: str, device: str = "cpu") -> nn.Module:
    """The transformers model in directory `path`, float32, eval mode, on `device`."""
    import transformers

    if not os.path.isfile(os.path.join(os.fspath(path), "config.json")):
        raise CalibrationError(f"{option} needs a transformers model directory (with config.json), "
                               f"got {os.fspath(path)!r}")
    config = transformers.AutoConfig.from_pretrained(path)
    model = _model_class(config).from_pretrained(path, torch_dtype=torch.float32)
    return model.to(device).eval()


def model_kind(model: nn.Module) -> str:
    """"decoder" for causal LMs (the published decoder objective: top-5 logit MSE), else
    "encoder" (mean |change| of the last hidden state)."""
    config = getattr(model, "config", None)
    if "CausalLM" in type(model).__name__ or bool(getattr(config, "is_decoder", False)):
        return "decoder"
    return "encoder"


def resolve_unit(unit: str, kind: str) -> str:
    """`unit` ("auto", "line" or "window") for a model of `kind` ("encoder" | "decoder")."""
    if unit not in UNITS:
        raise CalibrationError(f"--calibration-unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if unit == "auto":
        return "window" if kind == "decoder" else "line"
    return unit


def calibration_batches(model_dir: str, text: str, *, samples: int | None = None, seq_len: int = 128, seed: int = 0,
                        device: str = "cpu", option: str = "--calibration", hidden_states: bool = False,
                        batch_size: int = _BATCH, unit: str = "auto", kind: str = "encoder") -> list:
    """Model inputs cut from `text` (tokenized by the model directory's tokenizer), batched;
    each batch a dict for ``model(**batch)``.

    `unit` "window": `samples` windows of `seq_len` tokens (a text shorter than one window gives
    one window of all its tokens); "line": `samples` non-empty lines (all when there are fewer),
    each with special tokens, cut at `seq_len` tokens, batched by token count; "auto": lines
    for an encoder `kind`, windows for a decoder. `samples` None: :data:`DEFAULT_SAMPLES`.
    """
    import transformers

    unit = resolve_unit(unit, kind)
    if samples is None:
        samples = DEFAULT_SAMPLES[unit]
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise CalibrationError(f"--samples must be a positive integer, got {samples!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise CalibrationError(f"--seq-len must be an integer >= 2, got {seq_len!r}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{option}: the model directory {model_dir!r} has no usable tokenizer ({exc})") from None
    rng = random.Random(seed)
    inputs = _line_inputs(tokenizer, text, samples, seq_len, rng, option) if unit == "line" else \
        _window_inputs(tokenizer, text, samples, seq_len, rng, option)
    batches = []
    for group in _by_length(inputs):
        for i in range(0, len(group), batch_size):
            batch = {"input_ids": torch.stack(group[i: i + batch_size]).to(device)}
            if hidden_states:
                batch["output_hidden_states"] = True
            batches.append(batch)
    return batches


def _window_inputs(tokenizer, text: str, samples: int, seq_len: int, rng: random.Random, option: str) -> list:
    ids = tokenizer(text, return_tensors="pt", truncation=False)["input_ids"][0]
    if ids.numel() == 0:
        raise CalibrationError(f"{option}: the text gives no tokens")
    if ids.numel() <= seq_len:
        return [ids]
    starts = [rng.randint(0, ids.numel() - seq_len - 1) for _ in range(samples)]
    return [ids[s: s + seq_len] for s in starts]


def _line_inputs(tokenizer, text: str, samples: int, seq_len: int, rng: random.Random, option: str) -> list:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > samples:
        lines = [lines[i] for i in sorted(rng.sample(range(len(lines)), samples))]
    encoded = tokenizer(lines, truncation=True, max_length=seq_len)["input_ids"]
    inputs = [torch.tensor(ids, dtype=torch.long) for ids in encoded if len(ids) > 0]
    if not inputs:
        raise CalibrationError(f"{option}: the text gives no tokens")
    return inputs


def _by_length(inputs: list) -> list[list]:
    """Inputs grouped by token count (first appearance order), so no batch needs padding."""
    groups: dict[int, list] = {}
    for ids in inputs:
        groups.setdefault(int(ids.numel()), []).append(ids)
    return list(groups.values())


def write_stats(stats: Mapping, path: str, *, metadata: Mapping[str, str] | None = None,
                overwrite: bool = False, option: str = "-o/--output") -> int:
    """Write `<module>.x_mean` and `<module>.act_norm` (float32) of every module in `stats`
    (``collect_input_stats``) to a safetensors file, atomically; returns the tensor count."""
    from safetensors.torch import save_file

    from ..io.atomic import atomic_file

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{option}: {path!r} exists (pass --overwrite to replace it)")
    if not stats:
        raise CalibrationError("the model has no nn.Linear layer that ran on the calibration text")
    tensors = {}
    for name, s in stats.items():
        tensors[f"{name}.x_mean"] = s.mean.detach().to("cpu", torch.float32).contiguous()
        tensors[f"{name}.act_norm"] = s.l2_norm.detach().to("cpu", torch.float32).contiguous()
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=dict(metadata or {}))
    return len(tensors)

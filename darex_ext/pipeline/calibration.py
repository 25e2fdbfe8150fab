"""Calibration text for the CLI: model inputs, per-Linear input statistics, label-free q.

The published DAREx code (vengdeng/DAREx ``utils/getwx.py``, ``utils/outputchange.py``) draws
calibration inputs the same way for its statistics and its output-change objective: the whole
text tokenized in one call, then `samples` windows of `seq_len` tokens at offsets drawn with
Python's ``random.seed(0)`` (``randint(0, L - seq_len - 1)``). This module does the same with a
``random.Random(seed)`` of its own, so it never touches the global random state.

Models are loaded with transformers from a model directory (config.json), in float32 on the
chosen device, with the class config.json names, so module names match checkpoint names.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CalibrationError", "read_text", "load_model", "model_kind", "calibration_batches",
           "write_stats", "STATS_KEYS"]

STATS_KEYS = ("x_mean", "act_norm")
_BATCH = 16  # windows per forward pass


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


def calibration_batches(model_dir: str, text: str, *, samples: int = 50, seq_len: int = 128, seed: int = 0,
                        device: str = "cpu", option: str = "--calibration", hidden_states: bool = False,
                        batch_size: int = _BATCH) -> list:
    """`samples` windows of `seq_len` tokens of `text` (tokenized by the model directory's
    tokenizer), batched; each batch a dict for ``model(**batch)``. A text shorter than one
    window gives one window of all its tokens."""
    import transformers

    if not isinstance(samples, int) or samples < 1:
        raise CalibrationError(f"--samples must be a positive integer, got {samples!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise CalibrationError(f"--seq-len must be an integer >= 2, got {seq_len!r}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{option}: the model directory {model_dir!r} has no usable tokenizer ({exc})") from None
    ids = tokenizer(text, return_tensors="pt", truncation=False)["input_ids"][0]
    if ids.numel() == 0:
        raise CalibrationError(f"{option}: the text gives no tokens")
    if ids.numel() <= seq_len:
        windows = [ids]
    else:
        rng = random.Random(seed)
        starts = [rng.randint(0, ids.numel() - seq_len - 1) for _ in range(samples)]
        windows = [ids[s: s + seq_len] for s in starts]
    batches = []
    for i in range(0, len(windows), batch_size):
        batch = {"input_ids": torch.stack(windows[i: i + batch_size]).to(device)}
        if hidden_states:
            batch["output_hidden_states"] = True
        batches.append(batch)
    return batches


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

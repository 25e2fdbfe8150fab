"""Tiny transformers models with random weights, saved as safetensors, for the pipeline tests."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file


def _perturb(model: torch.nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * scale
            p.add_(noise.to(p.dtype))


def llama_pair(root: str, *, dtype=torch.float32, shard: str | None = None, n_finetuned: int = 1,
               layers: int = 2, hidden: int = 32, vocab: int = 64, seed: int = 0,
               ft_vocab: int | None = None) -> tuple[str, list[str]]:
    """A base Llama and n fine-tunes (base + noise); `shard` (e.g. "40KB") shards the files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(v):
        cfg = LlamaConfig(vocab_size=v, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=False)
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).to(dtype)

    base = build(vocab)
    base_dir = os.path.join(root, "base")
    kwargs = {"max_shard_size": shard} if shard else {}
    base.save_pretrained(base_dir, safe_serialization=True, **kwargs)
    fts = []
    for i in range(n_finetuned):
        ft = build(ft_vocab or vocab)
        if ft_vocab is None:
            ft.load_state_dict(base.state_dict())
        _perturb(ft, 0.02, seed + 100 + i)
        d = os.path.join(root, f"ft{i}")
        ft.save_pretrained(d, safe_serialization=True, **kwargs)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as fh:
            json.dump({"model_max_length": 64}, fh)
        fts.append(d)
    return base_dir, fts


def bert_pair(root: str, *, dtype=torch.float32) -> tuple[str, str]:
    """A BERT base without a head and a fine-tuned BertForSequenceClassification with one."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).to(dtype)
    ft_dir = os.path.join(root, "bert-ft")
    base_state = {k: v.clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    _perturb(model, 0.02, 7)
    model.save_pretrained(ft_dir, safe_serialization=True)
    base_dir = os.path.join(root, "bert-base")
    os.makedirs(base_dir)
    save_file(base_state, os.path.join(base_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(base_dir)
    return base_dir, ft_dir


def load_all(path: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    files = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors")] if os.path.isdir(path) else [path]
    for f in files:
        full = os.path.join(path, f) if os.path.isdir(path) else f
        with safe_open(full, framework="pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def dir_bytes(path: str) -> dict[str, bytes]:
    out = {}
    for f in sorted(os.listdir(path)):
        with open(os.path.join(path, f), "rb") as fh:
            out[f] = fh.read()
    return out

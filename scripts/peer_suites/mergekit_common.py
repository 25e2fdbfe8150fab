"""Stand-in for mergekit's `tests/common.py`, which its source distribution leaves out although
test_basic_merges.py and test_merge_dtypes.py import it. Written by darex from how those tests
call it (arcee-ai/mergekit, tests/): tiny models saved with save_pretrained, and a merge run into a
temporary folder that must yield a model, a config.json, no NaN and every weight the output's
architecture declares. scripts/peer_suites.sh copies it to tests/common.py only when the sdist
lacks one; stock and darex runs share it, so it cannot favour either.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
from transformers import (AutoConfig, CLIPVisionConfig, GPT2Config, GPT2LMHeadModel, GraniteConfig,
                          GraniteForCausalLM, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration)

from mergekit.architecture import arch_info_for_config, get_architecture_info
from mergekit.config import MergeConfiguration
from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex
from mergekit.merge import MergeOptions, run_merge


def _has_weights(out: str, index_name: str) -> bool:
    index = os.path.join(out, index_name)
    return os.path.exists(index) or os.path.exists(index[: -len(".index.json")])


def run_and_check_merge(config: MergeConfiguration, check_nan: bool = True, check_tensors: bool = True,
                        validate: Callable[[str], None] | None = None, index_json_name: str | None = None,
                        auto_arch: bool = False) -> None:
    with tempfile.TemporaryDirectory() as out:
        run_merge(config, out_path=out, options=MergeOptions())
        assert _has_weights(out, index_json_name or "model.safetensors.index.json"), "merge wrote no model"
        assert os.path.exists(os.path.join(out, "config.json")), "merge wrote no config.json"
        if check_nan:
            loader = LazyTensorLoader.from_disk(out, lazy_unpickle=False)
            for name in loader.index.tensor_paths:
                assert not torch.isnan(loader.get_tensor(name)).any(), f"{name} holds NaN"
        if check_tensors:
            model_cfg = AutoConfig.from_pretrained(out)
            arch = get_architecture_info(config, MergeOptions()) if auto_arch else arch_info_for_config(model_cfg)
            present = ShardedTensorIndex.from_disk(out).tensor_paths
            for w in arch.all_weights(model_cfg):
                if not w.optional and w.name not in present and not any(a in present for a in (w.aliases or ())):
                    raise RuntimeError(f"merge output lacks {w.name}")
        if validate is not None:
            validate(out)


def _save(model, path) -> str:
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def _tiny_llama(vocab_size: int = 64) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_attention_heads=16,
                       num_hidden_layers=2)


def make_picollama(path, vocab_size: int = 64) -> str:
    return _save(LlamaForCausalLM(_tiny_llama(vocab_size)), path)


def make_picogranite(path, vocab_size: int = 64) -> str:
    cfg = GraniteConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_attention_heads=16,
                        num_hidden_layers=2)
    return _save(GraniteForCausalLM(cfg), path)


def make_gpt2size(path) -> str:
    # GPT-2 small's shape: the tests that use it are about sizes, not values.
    cfg = GPT2Config(n_ctx=1024, n_embd=768, n_head=12, n_layer=12, n_positions=1024, vocab_size=50257)
    return _save(GPT2LMHeadModel(cfg), path)


def make_picoLlaVa(path) -> str:  # noqa: N802  (the name the tests import)
    vision = CLIPVisionConfig(image_size=32, patch_size=4, num_hidden_layers=2, num_attention_heads=2,
                              hidden_size=64, intermediate_size=128)
    cfg = LlavaConfig(vision_config=vision, text_config=_tiny_llama(), image_seq_length=16)
    return _save(LlavaForConditionalGeneration(cfg), path)

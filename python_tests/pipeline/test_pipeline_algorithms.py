"""`darex prune` with the DAREx / DPPA algorithms: --q-mode analytic, --method dppa, and the
recommendation column of `darex inspect`."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save_file

import darex_ext
import darex_ext.algorithms as algorithms
from darex_ext.pipeline import Checkpoint, PruneConfig, prune_model
from darex_ext.pipeline.inspect import inspect_path
from pipeline_models import llama_pair, load_all

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("alg"))
    base, (ft,) = llama_pair(root, layers=3)
    return base, ft


def _x_means(path, ft_dir, names):
    ck = Checkpoint(ft_dir)
    g = torch.Generator().manual_seed(0)
    stats = {n[: -len(".weight")] + ".x_mean": torch.randn(ck.infos[n].shape[1], generator=g) + 0.5 for n in names}
    save_file(stats, path)
    return {n: stats[n[: -len(".weight")] + ".x_mean"] for n in names}


@pytest.mark.parametrize("per_row", [False, True])
def test_analytic_q_mode_follows_the_published_rules(llama, tmp_path, per_row):
    # Layers with statistics get their scan's q (the layer mean as published, or per row);
    # every other selected tensor gets the mean of the layer q's (rescale_q's rule).
    from darex_ext.algorithms.analytic_q_reference import reference_mean_of_layers

    base_dir, ft_dir = llama
    with_stats = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"]
    x_means = _x_means(str(tmp_path / "stats.safetensors"), ft_dir, with_stats)
    cfg = PruneConfig(method="darex-q", p=0.9, q_mode="analytic", stats=str(tmp_path / "stats.safetensors"),
                      preset="decoder", seed=6, per_row=per_row)
    summary = prune_model(base_dir, ft_dir, tmp_path / "out", cfg)
    base, ft, got = load_all(base_dir), load_all(ft_dir), load_all(str(tmp_path / "out"))
    rows = {n: algorithms.analytic_q(torch.sub(ft[n], base[n]), x_means[n], 0.9) for n in with_stats}
    fill = reference_mean_of_layers([float(q.mean()) for q in rows.values()])
    for name in with_stats + ["model.layers.2.mlp.down_proj.weight"]:
        delta = torch.sub(ft[name], base[name])
        q = (rows[name] if per_row else float(rows[name].mean())) if name in rows else fill
        want = base[name].clone().add_(darex_ext.prune_(delta, 0.9, q, seed=darex_ext.tensor_seed(6, name)))
        assert torch.equal(got[name], want), name
    notes = "\n".join(summary["notes"])
    assert "analytic (reference precision" in notes and "mean of layer q's" in notes


def test_dppa_prunes_each_matrix_at_its_dynamic_density(llama, tmp_path):
    base_dir, ft_dir = llama
    cfg = PruneConfig(method="dppa", p=0.9, preset="decoder")
    prune_model(base_dir, ft_dir, tmp_path / "out", cfg)
    base, ft, got = load_all(base_dir), load_all(ft_dir), load_all(str(tmp_path / "out"))
    names = [n for n in ft if ".mlp." in n or ".self_attn." in n]
    rates = algorithms.dppa_densities({n: ft[n] - base[n] for n in names}, 0.9).drop_rates()
    assert len(set(rates.values())) > 1  # really per-module densities
    for name in names:
        want = base[name].clone().add_(algorithms.dppa_prune_(torch.sub(ft[name], base[name]), rates[name]))
        assert torch.equal(got[name], want), name


def test_inspect_gives_one_model_level_recommendation(llama):
    from darex_ext.algorithms import delta_stats, recommend

    base_dir, ft_dir = llama
    buf = io.StringIO()
    inspect_path(ft_dir, base=base_dir, p=0.99, out=buf, limit=4)
    text = buf.getvalue()
    table = text.split("\n\n")[0].strip().splitlines()
    assert len(table) == 3 + 4 and "recommended" not in table[1]  # 4 rows, no per-tensor advice
    assert text.count("recommendation at p = 0.99") == 1
    base, ft = load_all(base_dir), load_all(ft_dir)
    want = recommend(delta_stats({n: ft[n].float() - base[n].float() for n in ft}), 0.99)
    assert f"recommendation at p = 0.99: {want.method}" in text
    assert all(f"  - {r}" in text for r in want.reasons)

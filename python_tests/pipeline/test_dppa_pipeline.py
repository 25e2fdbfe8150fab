"""`darex merge --method dppa` and `darex prune --method dppa` on tiny Llama checkpoints: the
authors' pipeline (a twin of their scripts, python_tests/dppa_twin.py) for one fine-tune, task
arithmetic of the DPPA deltas for several, worker-count byte identity, usage errors."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from darex_ext import algorithms
from darex_ext.apps import cli
from darex_ext.pipeline import MergeConfig, PruneConfig, merge_models, prune_model
from dppa_twin import authors_dp, authors_enhance
from pipeline_models import dir_bytes, llama_pair, load_all

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")  # the authors' find_layers order
LAYERS = 3


def _heavy_tailed_finetunes(root: str, dtype: torch.dtype) -> tuple[str, list[str]]:
    """llama_pair's layout with deltas whose outliers differ between modules (so DP's densities
    move) and one module full of them (so every density at p = 0.9 stays positive)."""
    base_dir, fts = llama_pair(root, layers=LAYERS, n_finetuned=2, dtype=dtype)
    base = load_all(base_dir)
    g = torch.Generator().manual_seed(11)
    for k, ft_dir in enumerate(fts):
        state = {}
        for j, (name, t) in enumerate(base.items()):
            crowded = name == f"model.layers.{k}.mlp.up_proj.weight"
            heavy = torch.rand(t.shape, generator=g) > (0.9 if crowded else 0.97)
            noise = torch.randn(t.shape, generator=g) * 0.01 * (1 + (12 if crowded else 2 + j % 3) * heavy)
            state[name] = (t.float() + noise).to(dtype)
        save_file(state, os.path.join(ft_dir, "model.safetensors"), metadata={"format": "pt"})
    return base_dir, fts


@pytest.fixture(scope="module")
def fp32_models(tmp_path_factory):
    return _heavy_tailed_finetunes(str(tmp_path_factory.mktemp("dppa32")), torch.float32)


def _deltas(base_dir: str, ft_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base, ft = load_all(base_dir), load_all(ft_dir)
    return base, {n: ft[n] - base[n] for n in base}


def _layers(deltas: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{f"model.layers.{i}.{m}.weight": deltas[f"model.layers.{i}.{m}.weight"] for m in MODULES}
            for i in range(LAYERS)]


def test_one_finetune_equals_the_authors_pipeline(fp32_models, tmp_path, capsys):
    base_dir, (ft_dir, _) = fp32_models
    out = str(tmp_path / "m")
    assert cli.main(["merge", base_dir, ft_dir, "-o", out, "--method", "dppa", "-p", "0.9", "--alpha-hi", "1.9",
                     "--alpha-lo", "1.1", "--quiet"]) == 0
    assert "merged 1 fine-tunes (dppa)" in capsys.readouterr().out
    # run.sh: get_offset, DP at 0.9 and 0.8, enhance_offset (nine 1.9, eight 1.1), add the base.
    base, deltas = _deltas(base_dir, ft_dir)
    layers = _layers(deltas)
    nine, dens = authors_dp(layers, 0.9)
    eight, _ = authors_dp(layers, 0.8)
    assert min(dens.values()) > 0 and len(set(dens.values())) > 5
    enhanced = authors_enhance({k: eight.get(k, v) for k, v in deltas.items()},
                               {k: nine.get(k, v) for k, v in deltas.items()}, 1.1, 1.9)
    got = load_all(out)
    assert got.keys() == base.keys()
    for name in base:
        assert torch.equal(got[name], enhanced[name] + base[name]), name


def test_defaults_are_the_authors_start_point(fp32_models, tmp_path):
    base_dir, (ft_dir, _) = fp32_models
    merge_models(base_dir, [ft_dir], tmp_path / "d", MergeConfig(method="dppa", p=0.9))
    merge_models(base_dir, [ft_dir], tmp_path / "e",
                 MergeConfig(method="dppa", p=0.9, alpha_hi=1.8, alpha_lo=0.0, width=0.1))
    assert dir_bytes(str(tmp_path / "d")) == dir_bytes(str(tmp_path / "e"))


def _amplified(base_dir: str, ft_dir: str, p: float, a_hi: float, a_lo: float, width: float = 0.1):
    base, deltas = _deltas(base_dir, ft_dir)
    blocks = {f"model.layers.{i}": list(layer) for i, layer in enumerate(_layers(deltas))}
    parts = algorithms.partitions(deltas, algorithms.dppa_densities(deltas, p, blocks=blocks), width=width)
    out = {}
    for name, d in deltas.items():
        hi = parts.hi.get(name)
        out[name] = algorithms.amplify_tensor(d, hi, None if hi is None else hi | parts.lo[name], a_hi, a_lo)
    return base, out


def test_several_finetunes_add_their_weighted_dppa_deltas(fp32_models, tmp_path):
    base_dir, fts = fp32_models
    cfg = MergeConfig(method="dppa", p=0.8, weights=(0.6, 0.7), lam=0.9, alpha_hi=1.5, alpha_lo=1.25, width=0.2)
    one = tmp_path / "one"
    merge_models(base_dir, fts, one, cfg)
    base, amp0 = _amplified(base_dir, fts[0], 0.8, 1.5, 1.25, 0.2)
    _, amp1 = _amplified(base_dir, fts[1], 0.8, 1.5, 1.25, 0.2)
    got = load_all(str(one))
    for name in base:
        total = amp0[name].mul(0.6).add_(amp1[name].mul(0.7)).mul_(0.9)
        assert torch.equal(got[name], base[name] + total), name
    merge_models(base_dir, fts, tmp_path / "two", cfg, workers=2)
    assert dir_bytes(str(one)) == dir_bytes(str(tmp_path / "two"))


def test_bf16_checkpoints_round_once(tmp_path):
    base_dir, (ft_dir, _) = _heavy_tailed_finetunes(str(tmp_path), torch.bfloat16)
    merge_models(base_dir, [ft_dir], tmp_path / "m",
                 MergeConfig(method="dppa", p=0.9, alpha_hi=2.1, alpha_lo=1.3, preset="decoder"))
    base, amp = _amplified(base_dir, ft_dir, 0.9, 2.1, 1.3)
    got = load_all(str(tmp_path / "m"))
    for name in base:
        want = (base[name].float() + amp[name]).to(torch.bfloat16) if (".mlp." in name or ".self_attn." in name) \
            else base[name]
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], want), name


def test_prune_dppa_keeps_deltas_outside_the_blocks_whole(fp32_models, tmp_path):
    base_dir, (ft_dir, _) = fp32_models
    prune_model(base_dir, ft_dir, tmp_path / "p", PruneConfig(method="dppa", p=0.9, preset="all"))
    base, deltas = _deltas(base_dir, ft_dir)
    pruned, _ = authors_dp(_layers(deltas), 0.9)
    got = load_all(str(tmp_path / "p"))
    for name in base:
        want = base[name] + pruned.get(name, deltas[name])
        assert torch.equal(got[name], want), name
    assert len(pruned) == LAYERS * len(MODULES)


def _usage_error(argv, capsys, needle):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_usage_errors(fp32_models, tmp_path, capsys):
    base_dir, (ft_dir, _) = fp32_models
    out = str(tmp_path / "o")
    merge = ["merge", base_dir, ft_dir, "-o", out]
    _usage_error([*merge, "--method", "dppa"], capsys, "needs -p")
    _usage_error([*merge, "--method", "ties", "--alpha-hi", "1.9"], capsys, "applies to method 'dppa' only")
    _usage_error([*merge, "--method", "dppa", "-p", "0.9", "--width", "-0.1"], capsys, "width")
    _usage_error([*merge, "--method", "dppa", "-p", "0.9", "--normalize"], capsys, "normalize")
    _usage_error([*merge, "--method", "dppa", "-p", "0.9", "--q", "0.2"], capsys, "q applies")
    _usage_error([*merge, "--method", "dppa", "-p", "0.9", "--alpha-lo", "nan"], capsys, "--alpha-lo")
    assert not os.path.exists(out)
    # Nothing in a block: refused after the headers are read, before anything is written.
    assert cli.main([*merge, "--method", "dppa", "-p", "0.9", "--include", "embed_tokens"]) == 1
    assert "no selected matrix belongs to a transformer block" in capsys.readouterr().err
    assert not os.path.exists(out)

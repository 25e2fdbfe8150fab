"""`darex prune | apply | merge | inspect | demo`: exit codes, one-line failures, --help."""

from __future__ import annotations

import os

import pytest
import torch

from darex_ext.apps import cli
from pipeline_models import dir_bytes, llama_pair, load_all


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli"))
    base, fts = llama_pair(root, n_finetuned=2)
    return base, fts


@pytest.mark.parametrize("command", ["prune", "apply", "merge", "inspect", "demo"])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _usage_error(argv, capsys, needle):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err, err


def test_usage_errors_exit_2(pair, tmp_path, capsys):
    base, (ft, ft2) = pair
    out = str(tmp_path / "o")
    _usage_error(["prune", base, ft, "-o", out, "--method", "darex-q"], capsys, "needs --q")
    _usage_error(["prune", base, ft, "-o", out, "--q", "0.2", "--q-mode", "analytic"], capsys, "not allowed with")
    _usage_error(["prune", base, ft, "-o", out, "--method", "nope"], capsys, "invalid choice")
    _usage_error(["prune", base, ft, "-o", out, "--method", "magnitude", "--format", "seeded"], capsys, "seeded")
    _usage_error(["prune", base, ft, "-o", out, "--workers", "0"], capsys, "--workers")
    _usage_error(["prune", base, ft], capsys, "-o/--output")
    _usage_error(["prune", base, ft, "-o", out, "-p", "1.0"], capsys, "drop rate")
    _usage_error(["merge", base, ft, ft2, "-o", out, "--weights", "1"], capsys, "--weights has 1 values")
    _usage_error(["merge", base, ft, "-o", out, "--method", "dare-ties"], capsys, "needs -p")
    _usage_error(["demo", "-p", "1.5"], capsys, "-p must be")
    assert not os.path.exists(out)


def _failure(argv, capsys, needle):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


def test_failures_exit_1_with_one_line(pair, tmp_path, capsys):
    base, (ft, _) = pair
    out = tmp_path / "o"
    _failure(["prune", str(tmp_path / "missing"), ft, "-o", str(out)], capsys, "no such file or directory")
    _, (wide,) = llama_pair(str(tmp_path / "wide"), hidden=48)
    capsys.readouterr()
    _failure(["prune", base, wide, "-o", str(out)], capsys, "CheckpointMismatch")
    assert not out.exists()
    out.mkdir()
    _failure(["prune", base, ft, "-o", str(out), "--quiet"], capsys, "already exists (pass --overwrite")
    _failure(["apply", base, str(tmp_path / "nodelta"), "-o", str(tmp_path / "a")], capsys, "no such file")
    if not torch.cuda.is_available():
        _failure(["prune", base, ft, "-o", str(tmp_path / "c"), "--device", "cuda", "--quiet"], capsys, "CUDA")
        assert not (tmp_path / "c").exists()


def test_prune_apply_inspect_roundtrip(pair, tmp_path, capsys):
    base, (ft, _) = pair
    dense, delta, applied = (str(tmp_path / n) for n in ("dense", "delta", "applied"))
    common = ["--method", "darex-q", "-p", "0.99", "--q", "0.1", "--seed", "0x2a", "--preset", "decoder", "--quiet"]
    assert cli.main(["prune", base, ft, "-o", dense, *common]) == 0
    assert "pruned 14 of 21 tensors" in capsys.readouterr().out
    assert cli.main(["prune", base, ft, "-o", delta, "--format", "seeded", *common]) == 0
    assert cli.main(["apply", base, delta, "-o", applied, "--quiet"]) == 0
    assert dir_bytes(dense) == dir_bytes(applied)
    capsys.readouterr()
    assert cli.main(["inspect", delta]) == 0
    text = capsys.readouterr().out
    assert "seeded" in text and "q=0.1" in text and "seed=42" in text
    assert cli.main(["inspect", dense, "--base", base, "--limit", "3"]) == 0
    text = capsys.readouterr().out
    assert len(text.split("\n\n")[0].strip().splitlines()) == 3 + 3  # 3 rows, then one model-level advice
    assert text.count("recommendation at p = 0.99:") == 1


def test_merge_cli(pair, tmp_path, capsys):
    base, fts = pair
    out = str(tmp_path / "m")
    assert cli.main(["merge", base, *fts, "-o", out, "--method", "ties", "-p", "0.7", "--weights", "0.6", "0.4",
                     "--quiet"]) == 0
    assert "merged 2 fine-tunes (ties)" in capsys.readouterr().out
    got, b = load_all(out), load_all(base)
    assert got.keys() == b.keys()
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert os.path.isfile(os.path.join(out, "config.json"))


def test_demo_quick_prints_the_table(capsys):
    from darex_ext.apps.demo import default_task, run_demo

    result = run_demo(p=0.99, quick=True, task=default_task(quick=True))
    text = capsys.readouterr().out
    for needle in ("base (pretrained)", "fine-tuned", "DARE ", "DAREx-q", "test acc", "GB/s", "vs dense"):
        assert needle in text, text
    dare, darex = result["results"]["dare"], result["results"]["darex-q"]
    assert 0.01 - 1e-9 <= result["q"] <= 0.5
    assert darex["bytes"] < 0.05 * result["dense_bytes"] and dare["bytes"] < 0.05 * result["dense_bytes"]
    # q is chosen on validation data among grid points that include DARE's own 1 - p
    assert darex["accuracy"] >= dare["accuracy"] - 0.05


def test_prune_mask_spec_choice(pair, tmp_path, capsys):
    # --mask philox reproduces spec v1's masks (releases before v2); the delta records the spec,
    # so apply rebuilds exactly the dense prune under either spec, and the two specs differ at p = 0.99.
    from darex_ext import storage

    base, (ft, _) = pair
    common = ["--method", "dare", "-p", "0.99", "--seed", "7", "--preset", "decoder", "--quiet"]
    outs = {}
    for spec in ("skip", "philox"):
        dense, delta, applied = (str(tmp_path / f"{n}-{spec}") for n in ("dense", "delta", "applied"))
        assert cli.main(["prune", base, ft, "-o", dense, "--mask", spec, *common]) == 0
        assert cli.main(["prune", base, ft, "-o", delta, "--format", "seeded", "--mask", spec, *common]) == 0
        assert cli.main(["apply", base, delta, "-o", applied, "--quiet"]) == 0
        assert dir_bytes(dense) == dir_bytes(applied), spec
        with storage.load(os.path.join(delta, "delta.safetensors")) as f:
            assert {f[n].meta["mask"] for n in f.keys()} == {spec}
        capsys.readouterr()
        assert cli.main(["inspect", delta]) == 0
        assert f"mask={spec}" in capsys.readouterr().out
        outs[spec] = load_all(dense)
    assert any(not torch.equal(outs["skip"][k], outs["philox"][k]) for k in outs["skip"])
    _usage_error(["prune", base, ft, "-o", str(tmp_path / "x"), "--mask", "v3"], capsys, "invalid choice")

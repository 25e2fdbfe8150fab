"""Bad arguments to the model-level jobs are refused before anything is created: an unusable
--device, a q or p that is not a finite number in range, tensors of a dtype the kernels cannot
compute on (float8). Config errors are ValueError/TypeError naming the argument; on the command
line a bad value is a usage error (exit 2) and an environment or checkpoint problem exits 1 with
one line on stderr; either way no output and no temporary file or directory appears."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

import darex_ext
from darex_ext.algorithms import analytic_q
from darex_ext.apps import cli
from darex_ext.pipeline import MergeConfig, PruneConfig, merge_models, plan_prune, prune_model
from darex_ext.pipeline.output import DENSE_FILE

from conftest import randn

CUDA_USABLE = darex_ext.cuda_built() and torch.cuda.is_available()
FP8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]
NAN, INF = float("nan"), float("inf")


def _pair(root, extra: dict | None = None) -> tuple[str, str]:
    """A tiny base / fine-tuned pair of .safetensors files (float32 plus `extra` tensors)."""
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(4, 6, generator=g), "b.bias": torch.randn(6, generator=g)}
    base.update(extra or {})
    ft = {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in base.items()}
    os.makedirs(root, exist_ok=True)
    paths = os.path.join(root, "base.safetensors"), os.path.join(root, "ft.safetensors")
    save_file(base, paths[0])
    save_file(ft, paths[1])
    return paths


@pytest.fixture
def pair(tmp_path):
    return _pair(str(tmp_path / "in"))


def _listing(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}


def _usage_error(argv, capsys, *needles):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def _failure(argv, capsys, *needles):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# --- 1. --device cuda on a build or machine without CUDA -------------------------------------

@pytest.mark.skipif(CUDA_USABLE, reason="CUDA is usable here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_config_refuses_an_unusable_cuda_device(device):
    for make in (lambda: PruneConfig(device=device), lambda: MergeConfig(device=device)):
        with pytest.raises(ValueError, match=r"--device") as exc:
            make()
        assert "CUDA" in str(exc.value) and repr(device) in str(exc.value)


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "gpu"])
def test_config_refuses_an_unknown_device(device):
    for make in (lambda: PruneConfig(device=device), lambda: MergeConfig(device=device)):
        with pytest.raises(ValueError, match=r"device \(--device\) must be"):
            make()


@pytest.mark.skipif(CUDA_USABLE, reason="CUDA is usable here")
@pytest.mark.parametrize("command", ["prune", "prune-delta", "apply", "merge"])
def test_cli_cuda_without_cuda_fails_before_creating_anything(pair, tmp_path, capsys, command):
    base, ft = pair
    delta = str(tmp_path / "delta")
    if command == "apply":
        assert cli.main(["prune", base, ft, "-o", delta, "--format", "seeded", "--quiet"]) == 0
        capsys.readouterr()
    before = _listing(tmp_path)
    out = str(tmp_path / "out")
    argv = {"prune": ["prune", base, ft, "-o", out],
            "prune-delta": ["prune", base, ft, "-o", out, "--format", "bitmask"],
            "apply": ["apply", base, delta, "-o", out],
            "merge": ["merge", base, ft, "-o", out]}[command]
    _failure(argv + ["--device", "cuda", "--quiet"], capsys, "--device", "CUDA")
    assert _listing(tmp_path) == before


def test_cli_unknown_device_is_a_usage_error(pair, tmp_path, capsys):
    base, ft = pair
    before = _listing(tmp_path)
    for argv in (["prune", base, ft], ["merge", base, ft], ["apply", base, str(tmp_path)]):
        _usage_error(argv + ["-o", str(tmp_path / "out"), "--device", "tpu"], capsys, "--device")
    assert _listing(tmp_path) == before


# --- 2. q and p: finite and in range, refused at parsing / config construction ----------------

@pytest.mark.parametrize("q", [NAN, INF, -INF, -1.0, 0.0, 1e-40])
def test_prune_config_refuses_bad_q(q):
    with pytest.raises(ValueError, match=r"^q must be"):
        PruneConfig(method="darex-q", p=0.9, q=q)


@pytest.mark.parametrize("p", [NAN, INF, -INF, -0.1, 1.0])
def test_configs_refuse_bad_p(p):
    with pytest.raises(ValueError, match=r"^p \(the drop rate\)"):
        PruneConfig(p=p)
    with pytest.raises(ValueError, match=r"^p \(the drop rate\)"):
        MergeConfig(method="dare-linear", p=p)


def test_merge_config_refuses_bad_numbers():
    for q in (NAN, INF, -1.0, 0.0, 1e-40):
        with pytest.raises(ValueError, match=r"^q must be"):
            MergeConfig(method="dare-ties", p=0.5, q=q)
    with pytest.raises(ValueError, match=r"^lam \(--lambda\)"):
        MergeConfig(lam=NAN)
    with pytest.raises(ValueError, match=r"^weights\[1\] \(--weights\)"):
        MergeConfig(weights=(1.0, INF))
    with pytest.raises(TypeError, match=r"^q must be a real number"):
        PruneConfig(method="darex-q", q="0.5")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e-40", "abc"])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_cli_prune_bad_q_is_a_usage_error_and_creates_nothing(pair, tmp_path, capsys, value, fmt):
    base, ft = pair
    before = _listing(tmp_path)
    _usage_error(["prune", base, ft, "-o", str(tmp_path / "out"), "--method", "darex-q", "--format", fmt,
                  f"--q={value}", "--quiet"], capsys, "argument --q")
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("argv,needle", [
    (["-p", "nan"], "argument -p"), (["-p", "inf"], "argument -p"), (["-p", "-0.5"], "argument -p"),
    (["-p", "0.5", "--q=nan"], "argument --q"), (["-p", "0.5", "--q=-1"], "argument --q"),
    (["-p", "0.5", "--q=inf"], "argument --q"), (["-p", "0.5", "--lambda", "nan"], "argument --lambda"),
    (["-p", "0.5", "--weights", "1", "nan"], "argument --weights"),
], ids=["p-nan", "p-inf", "p-neg", "q-nan", "q-neg", "q-inf", "lambda-nan", "weights-nan"])
def test_cli_merge_bad_numbers_are_usage_errors(pair, tmp_path, capsys, argv, needle):
    base, ft = pair
    before = _listing(tmp_path)
    _usage_error(["merge", base, ft, ft, "-o", str(tmp_path / "out"), "--method", "dare-linear", *argv, "--quiet"],
                 capsys, needle)
    assert _listing(tmp_path) == before


def test_cli_prune_bad_p_is_a_usage_error(pair, tmp_path, capsys):
    base, ft = pair
    before = _listing(tmp_path)
    for value in ("nan", "inf", "-1", "1"):
        _usage_error(["prune", base, ft, "-o", str(tmp_path / "out"), f"-p={value}"], capsys, "argument -p",
                     "drop rate")
    assert _listing(tmp_path) == before


# --- 7. float8 tensors: refused at plan time unless excluded --------------------------------

@pytest.mark.skipif(not FP8, reason="this torch has no float8 dtypes")
@pytest.mark.parametrize("fp8", FP8, ids=lambda d: str(d).replace("torch.", ""))
def test_fp8_tensors_are_refused_at_plan_time_naming_them(tmp_path, fp8):
    base, ft = _pair(str(tmp_path / "in"), {"c.weight": torch.randn(4, 4).to(fp8)})
    with pytest.raises(ValueError, match=r"c\.weight") as exc:
        plan_prune(base, ft, PruneConfig())
    text = str(exc.value)
    assert str(fp8).replace("torch.", "") in text and "--exclude" in text and "a.weight" not in text
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=r"c\.weight"):
        prune_model(base, ft, tmp_path / "out", PruneConfig(format="bitmask"))
    with pytest.raises(ValueError, match=r"c\.weight"):
        merge_models(base, [ft], tmp_path / "merged", MergeConfig(method="task-arithmetic"))
    assert _listing(tmp_path) == before


@pytest.mark.skipif(not FP8, reason="this torch has no float8 dtypes")
def test_fp8_refusal_on_the_command_line_creates_nothing(tmp_path, capsys):
    base, ft = _pair(str(tmp_path / "in"), {"c.weight": torch.randn(4, 4).to(FP8[0])})
    before = _listing(tmp_path)
    for argv in (["prune", base, ft, "-o", str(tmp_path / "out")],
                 ["prune", base, ft, "--dry-run"],
                 ["merge", base, ft, "-o", str(tmp_path / "out"), "--method", "task-arithmetic"]):
        _failure(argv + ["--quiet"], capsys, "c.weight", "--exclude")
    assert _listing(tmp_path) == before


@pytest.mark.skipif(not FP8, reason="this torch has no float8 dtypes")
@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
def test_excluded_fp8_tensors_are_copied_as_they_are(tmp_path, capsys, fmt):
    from safetensors import safe_open

    base, ft = _pair(str(tmp_path / "in"), {"c.weight": torch.randn(4, 4).to(FP8[0])})
    out = str(tmp_path / "out")
    assert cli.main(["prune", base, ft, "-o", out, "--format", fmt, "--exclude", r"^c\.weight$", "--quiet"]) == 0
    assert "pruned 2 of 3 tensors" in capsys.readouterr().out
    name = "model.safetensors" if fmt == "dense" else DENSE_FILE  # a delta keeps them whole
    with safe_open(os.path.join(out, name), framework="pt") as got, safe_open(ft, framework="pt") as want:
        a, b = got.get_tensor("c.weight"), want.get_tensor("c.weight")
    assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# --- 6. analytic_q names its own arguments ---------------------------------------------------

def test_analytic_q_errors_name_x_mean_and_bias_delta():
    with pytest.raises(ValueError, match=r"^x_mean .*length 4") as exc:
        analytic_q(randn(3, 4), randn(5), 0.9)
    assert str(exc.value).startswith("x_mean")
    with pytest.raises(TypeError, match=r"^x_mean .*torch\.Tensor"):
        analytic_q(randn(3, 4), [1.0, 2.0, 3.0, 4.0], 0.9)
    with pytest.raises(TypeError, match=r"^x_mean .*floating"):
        analytic_q(randn(3, 4), torch.ones(4, dtype=torch.int64), 0.9)
    with pytest.raises(ValueError, match=r"^x_mean .*1-D"):
        analytic_q(randn(3, 4), randn(2, 2), 0.9)
    with pytest.raises(ValueError, match=r"^bias_delta .*length 3"):
        analytic_q(randn(3, 4), randn(4), 0.9, bias_delta=randn(4))
    with pytest.raises(ValueError, match=r"^delta is a meta tensor"):
        analytic_q(torch.empty(3, 4, device="meta"), randn(4), 0.9)

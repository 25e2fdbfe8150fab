"""mergekit's CLI reaching darex with no user code: the `darex-mergekit` console script
(darex_ext.integrations.mergekit_cli) is mergekit-yaml with the darex_* methods registered.

The merges run the installed console script in a subprocess, as a user would, and must write the
same tensors as `darex merge --config` of the same YAML."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
import torch
import yaml

pytest.importorskip("mergekit")

from darex_ext.apps import cli  # noqa: E402
from darex_ext.integrations import mergekit_cli  # noqa: E402
from pipeline_models import llama_pair, load_all  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(sys.executable), "darex-mergekit")


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    return llama_pair(str(tmp_path_factory.mktemp("mkyaml")), n_finetuned=2)


def _write(tmp_path, data: dict) -> str:
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_console_script_is_declared_and_installed():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("darex-mergekit") == "darex_ext.integrations.mergekit_cli:main"
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} missing: reinstall darex_ext (pip install -e .)"


def test_plain_mergekit_yaml_cannot_reach_darex(llamas, tmp_path):
    # Why the console script exists: mergekit 0.1.5 loads no plugins. If this starts passing,
    # mergekit grew a hook and darex should register through it instead.
    base, fts = llamas
    cfg = _write(tmp_path, {"merge_method": "darex_ties", "base_model": base,
                            "models": [{"model": f, "parameters": {"weight": 1.0}} for f in fts]})
    done = _run([os.path.join(os.path.dirname(sys.executable), "mergekit-yaml"), cfg, str(tmp_path / "out")])
    assert done.returncode != 0
    assert "Unimplemented merge method darex_ties" in done.stderr


DENSITIES = ({"weight": 0.5, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]},
             {"weight": 1.0, "density": 0.45})


@pytest.mark.parametrize("method, dtype, parameters, model_parameters", [
    ("darex_dare_ties", "float32", {"seed": 7}, DENSITIES),
    ("darex_ties", "bfloat16", {"consensus": "count", "lambda": 0.9}, DENSITIES),
    ("darex_della_linear", "float16", {"seed": 3}, tuple(dict(m, epsilon=0.2) for m in DENSITIES)),
    ("darex_sce", "float32", {"select_topk": [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}]}, ({}, {})),
])
def test_darex_mergekit_equals_darex_merge_config(llamas, tmp_path, method, dtype, parameters, model_parameters):
    base, fts = llamas
    data = {"merge_method": method, "base_model": base, "dtype": dtype, "parameters": parameters,
            "models": [{"model": f, "parameters": p} for f, p in zip((fts[1], fts[0]), model_parameters)]}
    cfg = _write(tmp_path, data)
    done = _run([SCRIPT, cfg, str(tmp_path / "mk"), "--no-copy-tokenizer", "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli.main(["merge", "--config", cfg, "-o", str(tmp_path / "dx"), "--quiet"]) == 0
    theirs, ours = load_all(str(tmp_path / "mk")), load_all(str(tmp_path / "dx"))
    base_t = load_all(base)
    assert theirs.keys() == ours.keys() and len(ours) == 21
    for k in ours:
        assert ours[k].dtype == getattr(torch, dtype)
        assert torch.equal(theirs[k], ours[k]), k
        assert not torch.equal(ours[k].float(), base_t[k].float()), k
    # mergekit's own files, so the output is a mergekit merge.
    assert {"mergekit_config.yml", "config.json"} <= set(os.listdir(tmp_path / "mk"))


def test_help_and_usage_errors_are_mergekit_yamls(capsys):
    with pytest.raises(SystemExit) as exc:
        mergekit_cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Usage: darex-mergekit [OPTIONS] CONFIG_FILE OUT_PATH" in out
    assert "--random-seed" in out and "--out-shard-size" in out
    with pytest.raises(SystemExit) as exc:
        mergekit_cli.main([])
    assert exc.value.code == 2
    assert "Missing argument 'CONFIG_FILE'" in capsys.readouterr().err


def test_drop_ins_switch(monkeypatch, capsys):
    import mergekit.sparsify as mks

    import darex_ext.integrations.mergekit as dm

    monkeypatch.setenv(mergekit_cli.DROP_INS_ENV, "maybe")
    assert mergekit_cli.main(["--help"]) == 2
    assert "must be 0 or 1" in capsys.readouterr().err
    monkeypatch.setenv(mergekit_cli.DROP_INS_ENV, "1")
    try:
        with pytest.raises(SystemExit):
            mergekit_cli.main(["--help"])
        assert mks.sparsify is dm.sparsify
    finally:
        dm.uninstall()
    assert mks.sparsify is not dm.sparsify
    monkeypatch.setenv(mergekit_cli.DROP_INS_ENV, "0")
    with pytest.raises(SystemExit):
        mergekit_cli.main(["--help"])
    assert mks.sparsify is not dm.sparsify

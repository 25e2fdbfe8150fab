"""`darex apply` never builds a wrong model: a delta file apart from its directory, a crafted
layout and a dense.safetensors that disagrees are refused before anything is written (exit 1,
one line, no output); what apply publishes reads back as planned."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darex_ext.apps import cli
from darex_ext.io.safetensors import encode_header, read_header
from darex_ext.pipeline import PruneConfig, apply_delta, prune_model
from darex_ext.pipeline.writer import Layout
from darex_ext.storage import FormatError
from pipeline_models import dir_bytes, llama_pair, load_all


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A decoder-preset seeded delta (norms, embeddings and lm_head in dense.safetensors), and
    the model `--format dense` writes for the same job."""
    root = tmp_path_factory.mktemp("hostile")
    base, (ft,) = llama_pair(str(root / "m"))
    cfg = dict(method="dare", p=0.9, seed=5, preset="decoder")
    prune_model(base, ft, root / "delta", PruneConfig(format="seeded", **cfg))
    prune_model(base, ft, root / "dense", PruneConfig(**cfg))
    assert (root / "delta" / "dense.safetensors").exists()
    return base, root


def _no_output(tmp_path, name="out"):
    return not (tmp_path / name).exists() and not [e for e in os.listdir(tmp_path) if e.startswith(f".{name}")]


def test_the_file_form_means_its_directory(pruned, tmp_path):
    base, root = pruned
    apply_delta(base, root / "delta" / "delta.safetensors", tmp_path / "out")
    assert dir_bytes(str(tmp_path / "out")) == dir_bytes(str(root / "dense"))


def test_a_delta_file_apart_from_its_dense_tensors_is_refused(pruned, tmp_path, capsys):
    base, root = pruned
    lone = tmp_path / "copy.safetensors"
    shutil.copy(root / "delta" / "delta.safetensors", lone)
    assert cli.main(["apply", base, str(lone), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass the delta directory" in err
    assert _no_output(tmp_path)


def test_a_directory_missing_its_dense_file_is_refused(pruned, tmp_path):
    base, root = pruned
    shutil.copytree(root / "delta", tmp_path / "d")
    os.unlink(tmp_path / "d" / "dense.safetensors")
    with pytest.raises(FormatError, match="dense.safetensors: missing"):
        apply_delta(base, tmp_path / "d", tmp_path / "out")
    assert _no_output(tmp_path)


def _rewrite_metadata(path, edit):
    """Rewrite a safetensors file's header metadata in place (tensor bytes unchanged)."""
    infos, meta = read_header(str(path))
    with open(path, "rb") as f:
        data = f.read()[next(iter(infos.values())).data_start:] if infos else b""
    meta = edit(dict(meta))
    entries = [(n, i.dtype, i.shape) for n, i in infos.items()]
    head, offsets = encode_header(entries, meta)
    assert all(offsets[n] == (i.begin, i.end) for n, i in infos.items())
    with open(path, "wb") as f:
        f.write(head + data)


def test_a_dense_file_that_disagrees_with_the_layout_is_a_format_error(pruned, tmp_path):
    base, root = pruned
    shutil.copytree(root / "delta", tmp_path / "d")
    layout = json.loads(read_header(str(tmp_path / "d" / "delta.safetensors"))[1]["darex.layout"])
    dense_names = set(read_header(str(tmp_path / "d" / "dense.safetensors"))[0])
    for f in layout["files"]:
        for t in f["tensors"]:
            if t[0] in dense_names:
                t[2] = [d + 1 for d in t[2]]
                break
    _rewrite_metadata(tmp_path / "d" / "delta.safetensors", lambda m: {**m, "darex.layout": json.dumps(layout)})
    with pytest.raises(FormatError, match="dense.safetensors"):
        apply_delta(base, tmp_path / "d", tmp_path / "out")
    assert _no_output(tmp_path)


def _layout_with(text_edit):
    def edit(meta):
        layout = json.loads(meta["darex.layout"])
        text_edit(layout)
        return {**meta, "darex.layout": json.dumps(layout)}
    return edit


CRAFTED = {
    "file listed twice": lambda L: L["files"].append(dict(L["files"][0])),
    "tensor listed twice": lambda L: L["files"][0]["tensors"].append(L["files"][0]["tensors"][0]),
    "tensor in two files": lambda L: L["files"].append({"file": "model-x.safetensors", "metadata": {},
                                                        "tensors": [L["files"][0]["tensors"][0]]}),
    "non-string metadata": lambda L: L["files"][0]["metadata"].update({"format": 1}),
    "path in a file name": lambda L: L["files"][0].update({"file": "../evil.safetensors"}),
    "hidden file name": lambda L: L["files"][0].update({"file": ".x.safetensors"}),
    "negative shape": lambda L: L["files"][0]["tensors"][0].__setitem__(2, [-1, 4]),
    "unknown dtype": lambda L: L["files"][0]["tensors"][0].__setitem__(1, "Q7"),
    "indexed not a bool": lambda L: L.update({"indexed": "yes"}),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_layouts_are_refused_before_writing(pruned, tmp_path, case):
    base, root = pruned
    shutil.copytree(root / "delta", tmp_path / "d")
    _rewrite_metadata(tmp_path / "d" / "delta.safetensors", _layout_with(CRAFTED[case]))
    with pytest.raises(FormatError, match="layout"):
        apply_delta(base, tmp_path / "d", tmp_path / "out")
    assert _no_output(tmp_path)


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_layout_edit_is_refused_or_applied_correctly(pruned, tmp_path_factory, data):
    # A hostile layout either raises before writing or (when the edit left it valid: another
    # shard name, an index file) rebuilds the tensors --format dense wrote. Never a corrupt or
    # wrong model.
    base, root = pruned
    work = tmp_path_factory.mktemp("lay")
    shutil.copytree(root / "delta", work / "d")
    layout = json.loads(read_header(str(work / "d" / "delta.safetensors"))[1]["darex.layout"])
    path = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=4))
    node, parent, key = layout, None, None
    for step in path:  # walk to a random node
        if isinstance(node, dict) and node:
            key = sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            break
        parent, node = node, node[key]
    if parent is None:
        return
    parent[key] = data.draw(_json)
    _rewrite_metadata(work / "d" / "delta.safetensors", lambda m: {**m, "darex.layout": json.dumps(layout)})
    try:
        apply_delta(base, work / "d", work / "out")
    except (FormatError, ValueError, FileNotFoundError):
        assert _no_output(work)
        return
    got, want = load_all(str(work / "out")), load_all(str(root / "dense"))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_layout_check_is_the_one_place(pruned):
    _base, root = pruned
    layout = Layout.from_json(read_header(str(root / "delta" / "delta.safetensors"))[1]["darex.layout"])
    layout.check()  # a layout darex wrote passes its own check


def test_the_atheris_target_runs_clean():
    # python_tests/fuzz_apply.py: a short run in CI keeps the target working; longer runs by hand.
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "fuzz_apply.py", "-runs=300", "-max_len=512", "-len_control=0", "-seed=1"],
                          cwd=here, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 300 runs" in done.stderr

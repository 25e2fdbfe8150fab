"""The label-free DAREx workflow through the CLI: `darex calibrate`, then `darex prune --method
darex-q` with --q auto, --q-mode analytic (--stats or --calibration, --eta auto) and --q-mode
learned, then `darex apply`, on tiny BERT and Llama models built here; the CLI's q equals the
Python API's; bad input fails in one line and writes nothing."""

from __future__ import annotations

import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from darex_ext import storage  # noqa: E402
from darex_ext.algorithms import analytic_q_for_model, collect_input_stats  # noqa: E402
from darex_ext.apps import cli  # noqa: E402
from darex_ext.pipeline.calibration import calibration_batches, load_model  # noqa: E402

WORDS = [f"w{i}" for i in range(60)]


def _tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(vocab))


def _pair(tmp_path, kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=65, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=48, max_position_embeddings=64, num_labels=2)
        cls = transformers.BertForSequenceClassification
    else:
        cfg = transformers.LlamaConfig(vocab_size=65, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
        cls = transformers.LlamaForCausalLM
    base = cls(cfg).eval()
    ft = cls(cfg).eval()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn_like(p) * 0.05 + 0.01)  # a shared direction: DARE's 1/(1-p) overshoots
    tok = _tokenizer(tmp_path)
    dirs = []
    for name, model in (("base", base), ("ft", ft)):
        d = tmp_path / f"{kind}_{name}"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(str(d))
    text = tmp_path / "calib.txt"
    rng = random.Random(1)
    # sentences of 4-20 words, one per line (the line unit's inputs; windows cut across them)
    text.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) + "\n"
                            for _ in range(50)))
    return dirs[0], dirs[1], str(text)


@pytest.fixture(scope="module", params=["bert", "llama"])
def models(request, tmp_path_factory):
    return (request.param, *_pair(tmp_path_factory.mktemp(request.param), request.param))


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _q_of(delta_dir: str) -> dict:
    return {name: sd.meta.get("q") for name, sd in storage.load(f"{delta_dir}/delta.safetensors").items()}


def test_calibrate_then_analytic_q_equals_the_api(models, tmp_path, capsys):
    kind, base, ft, text = models
    stats = str(tmp_path / "stats.safetensors")
    code, out, err = _run(["calibrate", ft, "--text", text, "--samples", "6", "--seq-len", "16", "-o", stats], capsys)
    assert code == 0, err
    assert "calibrated" in out
    from safetensors.torch import load_file

    saved = load_file(stats)
    model = load_model(ft, "FT")
    kind_of = "encoder" if kind == "bert" else "decoder"  # the CLI's auto unit: lines, or windows
    api_stats = collect_input_stats(model, calibration_batches(ft, open(text).read(), samples=6, seq_len=16,
                                                               kind=kind_of))
    for name, s in api_stats.items():
        assert torch.equal(saved[f"{name}.x_mean"], s.mean) and torch.equal(saved[f"{name}.act_norm"], s.l2_norm)

    out_dir = str(tmp_path / "delta")
    code, _, err = _run(["prune", base, ft, "-o", out_dir, "--method", "darex-q", "-p", "0.9", "--q-mode", "analytic",
                         "--stats", stats, "--format", "seeded", "--quiet"], capsys)
    assert code == 0, err
    assert "analytic (reference precision" in err and "mean of layer q's" in err
    cli_q = _q_of(out_dir)

    class S:
        def __init__(self, mean):
            self.mean = mean

    file_stats = {k[: -len(".x_mean")]: S(v) for k, v in saved.items() if k.endswith(".x_mean")}
    api_q = analytic_q_for_model(load_model(ft, "FT"), load_model(base, "BASE"), file_stats, 0.9)
    assert cli_q, "the delta holds no tensors"
    for name, q in cli_q.items():
        assert q == api_q[name], name  # weights, biases and the rest: identical
    assert any(api_q.sources[n] == "layer bias" for n in cli_q) == (kind == "bert")  # Llama has no biases
    # apply reproduces the dense output
    dense, applied = str(tmp_path / "dense"), str(tmp_path / "applied")
    assert _run(["prune", base, ft, "-o", dense, "--method", "darex-q", "-p", "0.9", "--q-mode", "analytic",
                 "--stats", stats, "--quiet"], capsys)[0] == 0
    assert _run(["apply", base, out_dir, "-o", applied, "--quiet"], capsys)[0] == 0
    from safetensors.torch import load_file as lf

    a = lf(f"{dense}/model.safetensors")
    b = lf(f"{applied}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", [["--q", "auto"], ["--q-mode", "analytic", "--eta", "auto"],
                                  ["--q-mode", "learned"], ["--q-mode", "analytic", "--precision", "float64",
                                                            "--per-row"]])
def test_label_free_modes_through_the_cli(models, tmp_path, capsys, mode):
    kind, base, ft, text = models
    out_dir = str(tmp_path / "out")
    argv = ["prune", base, ft, "-o", out_dir, "--method", "darex-q", "-p", "0.9", *mode, "--calibration", text,
            "--samples", "8", "--seq-len", "16", "--format", "seeded", "--quiet"]
    if "auto" in mode:
        argv += ["--q-grid" if mode[0] == "--q" else "--eta-grid", "0.1:0.5:0.2"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    qs = _q_of(out_dir)
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert notes and "q:" in notes[0], err
    if mode[:2] == ["--q", "auto"]:
        chosen = float(notes[0].split("auto = ")[1].split()[0])
        assert len(set(qs.values())) == 1 and next(iter(qs.values())) == pytest.approx(chosen, rel=1e-5)
    else:
        assert all(q is not None for q in qs.values())
    if "--per-row" in mode:  # per-row q: float64 tensors in the file, not JSON text in its header
        import json

        from darex_ext.io.safetensors import read_header

        header, meta = read_header(f"{out_dir}/delta.safetensors")
        index = json.loads(meta["darex_ext.tensors"])
        rows = [n for n, e in index.items() if e.get("q") == "tensor"]
        assert rows and all(f"{n}.q" in header for n in rows)
    # the dry run prints the same plan lines and writes nothing
    dry = str(tmp_path / "dry")
    code, out, _ = _run([*argv[:4], dry, *argv[5:], "--dry-run"], capsys)
    assert code == 0 and "note: q:" in out and not (tmp_path / "dry").exists()


@pytest.mark.parametrize("extra,code,needle", [
    (["--q", "auto"], 2, "--calibration"),
    (["--q-mode", "learned"], 2, "--calibration"),
    (["--q-mode", "analytic"], 2, "--stats"),
    (["--q-mode", "analytic", "--stats", "x.st", "--eta", "0"], 2, "--eta"),
    (["--q-mode", "analytic", "--stats", "x.st", "--eta", "nan"], 2, "--eta"),
    (["--q-mode", "analytic", "--eta", "auto", "--stats", "x.st"], 2, "--calibration"),
    (["--q", "auto", "--calibration", "missing.txt"], 2, "--calibration"),
    (["--q", "auto", "--calibration", "EMPTY"], 1, "--calibration"),
    (["--q", "auto", "--calibration", "TEXT", "--q-grid", "1:0:0.1"], 2, "--q-grid"),
])
def test_bad_input_one_line_nothing_written(models, tmp_path, capsys, extra, code, needle):
    kind, base, ft, text = models
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    extra = [str(empty) if e == "EMPTY" else text if e == "TEXT" else str(tmp_path / e) if e.endswith((".st", ".txt"))
             else e for e in extra]
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) if code == 2 else _nullcontext():
        got = cli.main(["prune", base, ft, "-o", str(out_dir), "--method", "darex-q", "-p", "0.9", *extra, "--quiet"])
        assert got == code
    err = capsys.readouterr().err
    assert needle in err.strip().splitlines()[-1], err
    assert not out_dir.exists()


def test_inspect_measures_with_calibration_text(models, capsys):
    kind, base, ft, text = models
    assert cli.main(["inspect", ft, "--base", base, "-p", "0.9", "--calibration", text, "--samples", "6",
                     "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "measured at p = 0.9" in out
    table = out.split("measured at p = 0.9")[1]
    for method in ("dare", "darex-q, q auto", "darex-q, analytic", "darex-q, learned per layer", "magnitude"):
        assert method in table
    assert out.count("recommendation at p = 0.9:") == 1 and "darex prune BASE PATH -p 0.9 --method" in out
    assert cli.main(["inspect", ft, "--calibration", text]) == 1  # needs --base
    assert "--base" in capsys.readouterr().err


def test_calibrate_errors(models, tmp_path, capsys):
    kind, base, ft, text = models
    out = tmp_path / "s.safetensors"
    assert cli.main(["calibrate", ft, "--text", str(tmp_path / "nope.txt"), "-o", str(out)]) == 1
    assert "--text" in capsys.readouterr().err and not out.exists()
    empty = tmp_path / "e.txt"
    empty.write_text("")
    assert cli.main(["calibrate", ft, "--text", str(empty), "-o", str(out)]) == 1
    assert "--text" in capsys.readouterr().err and not out.exists()
    assert cli.main(["calibrate", str(tmp_path), "--text", text, "-o", str(out)]) == 1
    assert "config.json" in capsys.readouterr().err and not out.exists()
    out.write_text("x")
    assert cli.main(["calibrate", ft, "--text", text, "-o", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def _lines_of(text: str) -> list[str]:
    return [ln.strip() for ln in open(text).read().splitlines() if ln.strip()]


def test_line_unit_one_input_per_line_with_special_tokens_no_padding(models):
    kind, base, ft, text = models
    tok = transformers.AutoTokenizer.from_pretrained(ft)
    lines = _lines_of(text)
    batches = calibration_batches(ft, open(text).read(), samples=20, seq_len=12, seed=3, unit="line", batch_size=4)
    rows = [row for b in batches for row in b["input_ids"]]
    assert len(rows) == 20
    drawn = sorted(random.Random(3).sample(range(len(lines)), 20))
    expected = [tok(lines[i], truncation=True, max_length=12)["input_ids"] for i in drawn]
    assert sorted(r.tolist() for r in rows) == sorted(expected)  # every drawn line, nothing else
    assert all(b["input_ids"].shape[0] <= 4 for b in batches)
    if kind == "bert":
        assert all(r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id for r in rows)
        assert any(len(e) == 12 for e in expected)  # a line cut at --seq-len keeps its [SEP]
    assert all(tok.pad_token_id not in r.tolist() for r in rows)  # grouped by length, never padded
    # fewer lines than --samples: every line once, in a fixed order
    again = calibration_batches(ft, open(text).read(), samples=500, seq_len=12, seed=7, unit="line")
    assert sum(b["input_ids"].shape[0] for b in again) == len(lines)
    assert [b["input_ids"].tolist() for b in again] == \
        [b["input_ids"].tolist() for b in calibration_batches(ft, open(text).read(), samples=500, seq_len=12,
                                                              seed=8, unit="line")]


def test_window_unit_is_the_published_draw(models):
    kind, base, ft, text = models
    tok = transformers.AutoTokenizer.from_pretrained(ft)
    content = open(text).read()
    ids = tok(content, return_tensors="pt", truncation=False)["input_ids"][0]
    rng = random.Random(0)
    starts = [rng.randint(0, ids.numel() - 16 - 1) for _ in range(5)]
    batches = calibration_batches(ft, content, samples=5, seq_len=16, unit="window", batch_size=2)
    got = torch.cat([b["input_ids"] for b in batches])
    assert torch.equal(got, torch.stack([ids[s: s + 16] for s in starts]))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]


def test_auto_unit_lines_for_encoders_windows_for_decoders(models, tmp_path, capsys):
    kind, base, ft, text = models
    from safetensors import safe_open

    stats = str(tmp_path / "stats.safetensors")
    assert _run(["calibrate", ft, "--text", text, "--seq-len", "16", "-o", stats], capsys)[0] == 0
    with safe_open(stats, "pt") as f:
        meta = f.metadata()
    unit = "line" if kind == "bert" else "window"
    assert meta["darex.calibration.unit"] == unit
    assert meta["darex.calibration.samples"] == str(len(_lines_of(text)) if unit == "line" else 50)
    forced = str(tmp_path / "forced.safetensors")
    assert _run(["calibrate", ft, "--text", text, "--seq-len", "16", "--calibration-unit", "window", "--samples",
                 "3", "-o", forced], capsys)[0] == 0
    with safe_open(forced, "pt") as f:
        assert f.metadata()["darex.calibration.unit"] == "window"
        assert f.metadata()["darex.calibration.tokens"] == str(3 * 16)


def test_bad_calibration_unit_is_refused(models, tmp_path, capsys):
    kind, base, ft, text = models
    from darex_ext.pipeline.calibration import CalibrationError

    with pytest.raises(CalibrationError, match="--calibration-unit"):
        calibration_batches(ft, open(text).read(), unit="sentence")
    with pytest.raises(CalibrationError, match="--samples"):
        calibration_batches(ft, open(text).read(), samples=0, unit="line")
    out = tmp_path / "s.safetensors"
    with pytest.raises(SystemExit):
        cli.main(["calibrate", ft, "--text", text, "--calibration-unit", "sentence", "-o", str(out)])
    assert "--calibration-unit" in capsys.readouterr().err and not out.exists()


def test_a_model_without_linear_layers_is_refused(tmp_path):
    from darex_ext.pipeline.calibration import CalibrationError, write_stats

    with pytest.raises(CalibrationError, match="no nn.Linear"):
        write_stats({}, str(tmp_path / "s.safetensors"))
    assert not (tmp_path / "s.safetensors").exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

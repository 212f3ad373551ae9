"""Issue 6's bad-input corpus through the real `txl` command: every input is made here (nothing committed), and
each must end in one clear line (exit code 2, no traceback) or be read and classified as documented. The app's
side of the same corpus is tests/test_bad_uploads.py; docs/RELIABILITY.md is the table of both."""
from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import pipelines.commands.classify
from pipelines.cli import main
from pipelines.model.inference import predict as real_predict
from pipelines.model.model_dir import ModelDir, load_model_dir, save_model_dir
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

GARBAGE = random.Random(6).randbytes(8192)
TINY = ["--d-model", "16", "--n-head", "2", "--d-inner", "32", "--n-layer", "1", "--segment-len", "16",
        "--mem-len", "16", "--vocab-size", "300", "--epochs", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "m")


def cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, phrase: str) -> None:
    """Exit 2 and exactly one `txl ...: error: ...` line holding `phrase`; progress bars may share stderr."""
    errors = [line for line in err.replace("\r", "\n").splitlines() if ": error: " in line]
    assert code == 2, err
    assert len(errors) == 1 and phrase.lower() in errors[0].lower(), err
    assert "Traceback" not in err and "internal error" not in err


def classify(capsys, model: Path, path: Path, *extra: str) -> tuple[int, str, Path]:
    out = path.with_name(path.name + ".out.csv")
    code, err = cli(capsys, "classify", "--model", str(model), "--input", str(path), "--output", str(out), *extra)
    return code, err, out


def _gz_cut() -> bytes:
    whole = gzip.compress(b"text\n" + b"a fine line of text\n" * 2000)
    return whole[: len(whole) // 2]


# (input file name, its bytes, the phrase of the one-line error)
REFUSED_INPUTS = {
    "empty_file": ("in.csv", b"", "is empty"),
    "whitespace_only_file": ("in.csv", b"  \n\t \r\n", "is empty"),
    "binary_garbage": ("in.csv", GARBAGE, "looks like a binary file"),
    "nul_bytes_after_header": ("in.csv", b"text\n" + bytes(200), "looks like a binary file"),
    "gzip_that_is_not": ("in.csv.gz", b"text\nhello\n", "damaged, truncated or not what its name says"),
    "truncated_gzip": ("in.csv.gz", _gz_cut(), "damaged, truncated"),
    "unsupported_type": ("in.xlsx", b"PK\x03\x04", "unsupported file type"),
    "header_only": ("in.csv", b"text,label\n", "no data rows"),
    "missing_column": ("in.csv", b"body,label\nhello,x\n", "no column 'text'"),
    "misspelled_column": ("in.csv", b"txet,label\nhello,x\n", "did you mean 'txet'"),
    "wrong_delimiter": ("in.csv", b"text;label\nhello;x\n", "separated by semicolons"),
    "tsv_with_commas": ("in.tsv", b"text,label\nhello,x\n", "name it .csv"),
    "duplicated_header": ("in.csv", b"text,id,text\na,1,b\n", "repeats the column(s) 'text'"),
    "ragged_long_row": ("in.csv", b"text,id\na,1\nb,2,3\n", "expected 2 fields in line 3, saw 3"),
    "unterminated_quote": ("in.csv", b'text\n"never closed\n', "eof inside string"),
    "jsonl_bad_line": ("in.jsonl", b'{"text": "a"}\n{"text": \n', "cannot parse in.jsonl"),
}


@pytest.mark.parametrize("case", REFUSED_INPUTS)
def test_unreadable_input_is_one_line_exit_2(capsys, model, tmp_path, case):
    name, data, phrase = REFUSED_INPUTS[case]
    (tmp_path / name).write_bytes(data)
    code, err, out = classify(capsys, model, tmp_path / name)
    assert_one_line_error(code, err, phrase)
    assert not out.exists() and not Path(f"{out}.partial").exists()  # refused before anything is written
    assert err.count("\n") == 1, err  # not even a progress bar


# (file name, bytes, the `error` column expected per row, the text expected in the output per row)
READ_INPUTS = {
    "latin1": ("in.csv", "text\ncafé naïve\n".encode("latin-1"), [""], ["café naïve"]),
    "mixed_utf8_latin1": ("in.csv", "text\nüber\n".encode() + "déjà\n".encode("latin-1"), ["", ""],
                          ["über", "déjà"]),
    "bom": ("in.csv", "\ufefftext\nhello\n".encode(), [""], ["hello"]),
    "utf16_with_bom": ("in.csv", "text\nhello\n".encode("utf-16"), [""], ["hello"]),
    "nan_empty_whitespace_cells": ("in.csv", b'text,label\nNaN,x\n,y\n"  \t ",z\nhello,\n',
                                   ["", "empty text", "empty text", ""], ["NaN", "", "  \t ", "hello"]),
    "jsonl_null_and_missing": ("in.jsonl", b'{"text": null}\n{"id": 3}\n{"text": "hi"}\n',
                               ["empty text", "empty text", ""], ["", "", "hi"]),
    "ragged_short_row": ("in.csv", b"text,id\na,1\nb\n", ["", ""], ["a", "b"]),
}


@pytest.mark.parametrize("case", READ_INPUTS)
def test_odd_but_readable_input_is_classified_row_for_row(capsys, model, tmp_path, case):
    name, data, errors, texts = READ_INPUTS[case]
    (tmp_path / name).write_bytes(data)
    code, err, out = classify(capsys, model, tmp_path / name)
    assert code == 0, err
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got["error"]) == errors and list(got["text"]) == texts
    assert all(got.loc[got["error"] == "", "predicted_label"].isin(["politics", "sport", "tech"]))
    fallback = "Latin-1" in err
    assert fallback == case.startswith(("latin1", "mixed")), err  # the stated fallback, and only then


def _damage(model: Path, tmp_path: Path, how) -> Path:
    bad = tmp_path / "bad_model"
    shutil.copytree(model, bad)
    how(bad)
    return bad


def _edit_config(**changes):
    def edit(d: Path):
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(config | changes))
    return edit


def _cut(d: Path, keep: float = 0.5):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: int(len(data) * keep)])


def _overwrite(start: int, length: int, byte: bytes = b"\xff"):
    def damage(d: Path):
        data = bytearray((d / "model.safetensors").read_bytes())
        at = start if start >= 0 else len(data) + start
        data[at:at + length] = byte * length
        (d / "model.safetensors").write_bytes(bytes(data))
    return damage


BAD_MODELS = {
    "missing_config": (lambda d: (d / "config.json").unlink(), "missing config.json"),
    "missing_weights": (lambda d: (d / "model.safetensors").unlink(), "missing model.safetensors"),
    "missing_tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer.json"),
    "not_a_directory": (lambda d: shutil.rmtree(d), "does not exist"),
    "truncated_weights": (_cut, "damaged or truncated"),
    "empty_weights": (lambda d: _cut(d, 0.0), "damaged or truncated"),
    "corrupted_weights_header": (_overwrite(8, 24), "damaged or truncated"),
    "corrupted_weights_data": (_overwrite(-2048, 2048), "nan or infinite"),
    "config_other_width": (_edit_config(d_model=32), "do not match config.json"),
    "config_other_label_count": (_edit_config(num_labels=5, labels=list("abcde")), "do not match config.json"),
    "config_labels_disagree": (_edit_config(labels=["a", "b"]), "2 label names for num_labels=3"),
    "config_unknown_key": (_edit_config(bogus=1), "unknown keys"),
    "config_not_json": (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
    "config_a_list": (lambda d: (d / "config.json").write_text("[1, 2]"), "holds a JSON list"),
    "tokenizer_damaged": (lambda d: (d / "tokenizer.json").write_text("garbage"), "tokenizer.json is damaged"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_damaged_model_directory_is_one_line_exit_2(capsys, model, tmp_path, case):
    how, phrase = BAD_MODELS[case]
    (tmp_path / "in.csv").write_text("text\nthe team won\n")
    code, err, out = classify(capsys, _damage(model, tmp_path, how), tmp_path / "in.csv")
    assert_one_line_error(code, err, phrase)
    assert not out.exists()


def _train(capsys, tmp_path: Path, frame: pd.DataFrame, *extra: str) -> tuple[int, str, Path]:
    frame.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "trained"
    code, err = cli(capsys, "train", "--train", str(tmp_path / "train.csv"), "--out", str(out), *TINY, *extra)
    return code, err, out


def test_training_file_with_one_class(capsys, tmp_path):
    code, err, _ = _train(capsys, tmp_path, pd.DataFrame({"text": ["a b c", "d e f"] * 3, "label": ["x"] * 6}))
    assert_one_line_error(code, err, "single class")


def test_one_example_of_a_class_is_kept_and_learned_as_a_label(capsys, tmp_path):
    frame = pd.concat([make_corpus(30), pd.DataFrame([{"id": 99, "text": "rain and sun", "label": "weather"}])])
    code, err, out = _train(capsys, tmp_path, frame)
    assert code == 0, err
    assert json.loads((out / "labels.json").read_text()) == ["politics", "sport", "tech", "weather"]


def test_every_class_with_one_example(capsys, tmp_path):
    code, err, _ = _train(capsys, tmp_path, pd.DataFrame({"text": ["a b", "c d"], "label": ["x", "y"]}))
    assert_one_line_error(code, err, "one example per class")


def test_validation_labels_unseen_in_training(capsys, tmp_path):
    make_corpus(9, seed=5).assign(label="weather").to_csv(tmp_path / "valid.csv", index=False)
    code, err, _ = _train(capsys, tmp_path, make_corpus(30), "--valid", str(tmp_path / "valid.csv"))
    assert_one_line_error(code, err, "validation labels not in the training data: weather")


def test_labels_unseen_at_evaluation_count_as_errors(capsys, model, tmp_path):
    frame = make_corpus(12, seed=4)
    frame.loc[:2, "label"] = "weather"
    frame.to_csv(tmp_path / "eval.csv", index=False)
    code, err = cli(capsys, "evaluate", "--model", str(model), "--data", str(tmp_path / "eval.csv"),
                    "--out", str(tmp_path / "ev"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["labels_unknown_to_model"] == ["weather"] and metrics["n_documents"] == 12


def test_fifty_mb_single_line_document_is_read_and_written_whole(capsys, model, tmp_path, monkeypatch):
    """The reading and writing path with a 50 MB cell on one line; the model's cost is linear in tokens and is
    the 1M-token test's subject, so `predict` is replaced by a stand-in that records what reached it."""
    line = ("word " * 10_000_000)[:50_000_000]
    (tmp_path / "big.csv").write_text("id,text\n1," + line + "\n2,short\n")
    seen = []

    def stand_in(md, texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return real_predict(md, ["a"] * len(texts), **kwargs)

    monkeypatch.setattr(pipelines.commands.classify, "predict", stand_in)
    started = time.perf_counter()
    code, err, out = classify(capsys, model, tmp_path / "big.csv")
    assert code == 0, err
    assert seen == [50_000_000, 5]
    assert len(pd.read_csv(out, usecols=["text"])["text"][0]) == 50_000_000
    assert time.perf_counter() - started < 60


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """Segments of 256 tokens, so that a million tokens are 4k forward calls of a 1-layer model (seconds)."""
    small = load_model_dir(make_model_dir(tmp_path_factory.mktemp("small") / "m"))
    config = small.model.config.to_dict() | {"segment_len": 256, "mem_len": 16, "clamp_len": 272}
    path = tmp_path_factory.mktemp("long") / "m"
    save_model_dir(path, ModelDir(TXLDocumentClassifier(TXLConfig.from_dict(config)), small.tokenizer, small.labels))
    return path


def test_a_million_token_document_is_classified_not_rejected(capsys, long_model, tmp_path, monkeypatch):
    text = " ".join(make_corpus(40, seed=7)["text"])
    text = (text + " ") * (2_100_000 // len(text) + 1)
    pd.DataFrame({"text": [text, "the vote"]}).to_csv(tmp_path / "long.csv", index=False)
    tokens = []

    def spy(md, texts, **kwargs):
        preds = real_predict(md, texts, **kwargs)
        tokens.extend(p.n_tokens for p in preds)
        return preds

    monkeypatch.setattr(pipelines.commands.classify, "predict", spy)
    code, err, out = classify(capsys, long_model, tmp_path / "long.csv", "--precision", "float32")
    assert code == 0, err
    assert tokens[0] >= 1_000_000
    got = pd.read_csv(out, keep_default_na=False)
    assert list(got["error"]) == ["", ""] and set(got["predicted_label"]) <= {"politics", "sport", "tech"}


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("case", ["binary_garbage", "truncated_weights"])
def test_real_process_exits_2_without_traceback(model, tmp_path, case):
    model_dir, name = model, "in.csv"
    if case == "binary_garbage":
        (tmp_path / name).write_bytes(GARBAGE)
        phrase = "looks like a binary file"
    else:
        (tmp_path / name).write_text("text\nhello\n")
        model_dir, phrase = _damage(model, tmp_path, _cut), "damaged or truncated"
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "classify", "--model", str(model_dir), "--input",
                           str(tmp_path / name), "--output", str(tmp_path / "o.csv")], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, phrase)


def test_no_file_is_replaced_without_overwrite(capsys, model, tmp_path):
    """classify --output, evaluate --out (a model directory's metrics.json above all) and train --out into a
    user's folder: exit 2 and one line; --overwrite replaces."""
    make_corpus(12, seed=1).to_csv(tmp_path / "in.csv", index=False)
    mine = tmp_path / "mine.csv"
    mine.write_text("precious\n")
    code, err = cli(capsys, "classify", "--model", str(model), "--input", str(tmp_path / "in.csv"), "--output",
                    str(mine))
    assert code == 2 and "--overwrite" in err and mine.read_text() == "precious\n"
    code, _ = cli(capsys, "classify", "--model", str(model), "--input", str(tmp_path / "in.csv"), "--output", str(mine),
                  "--overwrite")
    assert code == 0 and "predicted_label" in mine.read_text()
    metrics = (model / "metrics.json").read_text()
    code, err = cli(capsys, "evaluate", "--model", str(model), "--data", str(tmp_path / "in.csv"), "--out", str(model))
    assert code == 2 and "model directory" in err and (model / "metrics.json").read_text() == metrics
    assert cli(capsys, "evaluate", "--model", str(model), "--data", str(tmp_path / "in.csv"), "--out",
               str(tmp_path / "ev"))[0] == 0
    code, err = cli(capsys, "evaluate", "--model", str(model), "--data", str(tmp_path / "in.csv"), "--out",
                    str(tmp_path / "ev"))
    assert code == 2 and "metrics.json" in err
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    make_corpus(40, seed=2).to_csv(tmp_path / "train.csv", index=False)
    code, err = cli(capsys, "train", "--train", str(tmp_path / "train.csv"), "--out", str(folder), *TINY, "--init",
                    "none", "--ngrams", "off")
    assert code == 2 and "not empty" in err and (folder / "README.md").read_text() == "my notes\n"
    code, err = cli(capsys, "train", "--train", str(tmp_path / "train.csv"), "--out", str(mine), *TINY)
    assert code == 2 and "is a file" in err


def test_formulas_are_escaped_in_csv_output_and_top_k_is_capped(capsys, model, tmp_path):
    frame = pd.DataFrame({"text": ["=HYPERLINK(\"http://x\",\"click\") sport match", "+1 goal", "plain words"],
                          "note": ["@SUM(A1)", "-2", "ok"]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    code, err = cli(capsys, "classify", "--model", str(model), "--input", str(tmp_path / "in.csv"), "--output",
                    str(tmp_path / "out.csv"), "--top-k", "99")
    assert code == 0 and "more than the model's 3 classes" in err
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.text) == ["'=HYPERLINK(\"http://x\",\"click\") sport match", "'+1 goal", "plain words"]
    assert list(out.note) == ["'@SUM(A1)", "'-2", "ok"]
    assert [c for c in out.columns if c.startswith("top")] == ["top1_label", "top1_score", "top2_label", "top2_score",
                                                                "top3_label", "top3_score"]
    code, _ = cli(capsys, "classify", "--model", str(model), "--input", str(tmp_path / "in.csv"), "--output",
                  str(tmp_path / "out.jsonl"))
    assert code == 0 and json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["text"].startswith("=HYP")


def test_multi_label_is_announced_or_turned_off(capsys, tmp_path):
    frame = make_corpus(40, seed=3)
    frame.loc[::5, "label"] = "sport|tech"
    frame.to_csv(tmp_path / "train.csv", index=False)
    code, err = cli(capsys, "train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "a"), *TINY,
                    "--init", "none", "--ngrams", "off")
    assert code == 0 and "training a multi-label model over 3 labels" in err
    code, err = cli(capsys, "train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "b"), *TINY,
                    "--init", "none", "--ngrams", "off", "--multi-label", "no")
    assert_one_line_error(code, err, "'sport|tech' holds '|'")
    code, err = cli(capsys, "train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "c"), *TINY,
                    "--init", "none", "--ngrams", "off", "--multi-label", "yes")
    assert code == 0 and "training a multi-label model" not in err


@pytest.mark.parametrize("name", ["big.csv.xz", "big.jsonl.gz", "big.tsv", "big.parquet"])
def test_a_row_over_the_limit_is_refused_before_it_is_held(capsys, model, tmp_path, monkeypatch, name):
    """A small compressed file that decompresses to one huge cell: refused as soon as the row passes
    TXL_MAX_DOC_MB, in one line; rows under it, quoted newlines and all, are read."""
    import lzma
    monkeypatch.setenv("TXL_MAX_DOC_MB", "0.2")
    frame = pd.DataFrame({"text": ["short one", "x " * 200_000, "after"]})
    path = tmp_path / name
    raw = (frame.to_json(orient="records", lines=True) if "jsonl" in name else
           frame.to_csv(index=False, sep="\t" if "tsv" in name else ",")).encode()
    path.write_bytes(lzma.compress(raw) if name.endswith(".xz") else gzip.compress(raw) if name.endswith(".gz")
                     else raw)
    if name.endswith(".parquet"):  # a Parquet cell: the same limit, for a chunked and a whole read
        frame.to_parquet(path)
        code, err = cli(capsys, "train", "--train", str(path), "--out", str(tmp_path / "t"), *TINY, "--init", "none")
        assert_one_line_error(code, err, "TXL_MAX_DOC_MB")
    code, err, _ = classify(capsys, model, path)
    assert_one_line_error(code, err, "TXL_MAX_DOC_MB")
    ok = pd.DataFrame({"text": [("line one\nline two, \"quoted\" " * 2000)[:30_000] for _ in range(20)]})
    ok.to_csv(tmp_path / "many.csv", index=False)  # 600 KB in rows of 30 KB, each with newlines inside quotes
    code, err, out = classify(capsys, model, tmp_path / "many.csv")
    assert code == 0 and len(pd.read_csv(out)) == 20


def test_a_resumed_job_is_keyed_by_the_content_of_every_model_file(model, tmp_path):
    """A model file changed in place with its timestamp kept (here the labels) is another job: never mixed."""
    import argparse
    import shutil as sh

    from pipelines.commands.classify import _fingerprint
    copy = tmp_path / "m"
    sh.copytree(model, copy)
    make_corpus(5, seed=1).to_csv(tmp_path / "in.csv", index=False)
    args = argparse.Namespace(input=str(tmp_path / "in.csv"), model=str(copy), text_column="text", top_k=0,
                              precision="auto", chunk_rows=2000, explain=0)
    before = _fingerprint(args)
    stat = os.stat(copy / "labels.json")
    (copy / "labels.json").write_text((copy / "labels.json").read_text().replace("sport", "spork"))
    os.utime(copy / "labels.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _fingerprint(args) != before
    args.explain = 3
    assert _fingerprint(args) not in (before,)


@pytest.mark.parametrize("field, value, phrase", [("n_layer", 1_000_000, "n_layer 1000000"),
                                                  ("d_model", 10**9, "d_model 1000000000")])
def test_a_config_that_does_not_fit_the_weights_is_refused_before_the_model_is_built(capsys, model, tmp_path, field,
                                                                                      value, phrase):
    import shutil as sh
    copy = tmp_path / "m"
    sh.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    config[field] = value
    (copy / "config.json").write_text(json.dumps(config))
    make_corpus(3, seed=1).to_csv(tmp_path / "in.csv", index=False)
    code, err, _ = classify(capsys, copy, tmp_path / "in.csv")
    assert_one_line_error(code, err, phrase)


@pytest.mark.parametrize("name", ["bomb.csv.xz", "bomb.jsonl.gz", "bomb.tsv.bz2", "bomb.parquet", "plain.parquet",
                                  "bomb.txt.xz"])
def test_a_compression_bomb_is_refused_before_the_work(capsys, model, tmp_path, monkeypatch, name):
    """Many short rows packed past TXL_MAX_EXPANSION (100:1 by default; 20:1 here, which gzip can reach on a
    test's rows): refused in one line before any row is classified (a small file is decompressed once first),
    by classify, train and pretrain alike; with the ratio raised, the same file is read."""
    import bz2
    import lzma

    from pipelines.data import sources
    monkeypatch.setattr(sources, "EXPANSION_FLOOR", 200_000)  # the rule, at a size a test can afford
    monkeypatch.setenv("TXL_MAX_EXPANSION", "20")
    frame = pd.DataFrame({"text": ["the team won the final and the crowd cheered"] * 20_000, "label": "sport"})
    frame.loc[::2, "label"] = "politics"
    path = tmp_path / name
    if name.endswith(".parquet"):  # categories, or plain strings in dictionary-encoded pages: a few KB either way
        (frame.astype("category") if name.startswith("bomb") else frame).to_parquet(path, compression="zstd")
    else:
        raw = ("\n".join(frame["text"]) if ".txt" in name else frame.to_json(orient="records", lines=True)
               if "jsonl" in name else frame.to_csv(index=False, sep="\t" if "tsv" in name else ",")).encode()
        path.write_bytes({"xz": lzma.compress, "gz": gzip.compress, "bz2": bz2.compress}[name.rsplit(".", 1)[1]](raw))
    assert path.stat().st_size * 20 < 200_000 < len(frame) * 45
    if ".txt" in name:
        code, err = cli(capsys, "pretrain", "--text", str(path), "--out", str(tmp_path / "lm"), "--max-minutes", "1")
        assert_one_line_error(code, err, "TXL_MAX_EXPANSION")
        return
    code, err, out = classify(capsys, model, path)
    assert_one_line_error(code, err, "expands over 20:1")
    assert "TXL_MAX_EXPANSION" in err and not out.exists() and not Path(str(out) + ".partial").exists()
    code, err = cli(capsys, "train", "--train", str(path), "--out", str(tmp_path / "t"), *TINY, "--init", "none")
    assert_one_line_error(code, err, "expands over 20:1")
    monkeypatch.setenv("TXL_MAX_EXPANSION", "1e6")
    code, err, out = classify(capsys, model, path, "--chunk-rows", "5000")
    assert code == 0 and len(pd.read_csv(out)) == len(frame)


def test_input_columns_named_like_outputs_are_kept_renamed_and_carriage_returns_stay_in_their_cell(
        capsys, model, tmp_path):
    """An earlier run's output classified again keeps its old columns as input_<name> (they were dropped,
    silently); a bare '\\r' inside a cell is quoted in CSV and TSV output (it split the row when read back)."""
    path = tmp_path / "again.csv"
    path.write_text('text,score,error\n"the team won\rthe final",s1,e1\nthe vote was lost,s2,\n', newline="")
    for suffix in (".csv", ".tsv"):
        out = tmp_path / f"out{suffix}"
        code, err = cli(capsys, "classify", "--model", str(model), "--input", str(path), "--output", str(out))
        assert code == 0 and "'score', 'error' are also output columns" in err
        back = pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
        assert len(back) == 2 and back["text"].tolist()[0] == "the team won\rthe final"
        assert back["input_score"].tolist() == ["s1", "s2"] and back["input_error"].tolist() == ["e1", ""]
        assert set(back["error"]) == {""} and back["score"].between(0, 1).all()


def test_a_partial_folder_of_the_users_is_never_emptied(capsys, model, tmp_path):
    """`<output>.partial/` holding a file no job writes is refused in one line and left alone; one whose job.json
    is damaged (and nothing else) is another job's: started over, not an internal error."""
    data = tmp_path / "in.csv"
    pd.DataFrame({"text": ["the team won", "the vote was lost"]}).to_csv(data, index=False)
    part = tmp_path / "out.csv.partial"
    part.mkdir()
    (part / "notes.txt").write_text("mine")
    code, err = cli(capsys, "classify", "--model", str(model), "--input", str(data), "--output",
                    str(tmp_path / "out.csv"))
    assert_one_line_error(code, err, "holds files it did not write (notes.txt)")
    assert (part / "notes.txt").read_text() == "mine"
    (part / "notes.txt").unlink()
    (part / "job.json").write_text("not json")
    code, err = cli(capsys, "classify", "--model", str(model), "--input", str(data), "--output",
                    str(tmp_path / "out.csv"))
    assert code == 0 and "belongs to another job; starting over" in err and not part.exists()


@pytest.mark.parametrize("value", ["1e30", "nan", "-1", "0", "inf"])
def test_limits_from_the_environment_must_be_positive_numbers(capsys, model, tmp_path, monkeypatch, value):
    data = tmp_path / "in.csv.gz"
    data.write_bytes(gzip.compress(b"text\nthe team won\n"))
    for name in ("TXL_MAX_DOC_MB", "TXL_MAX_EXPANSION"):
        monkeypatch.setenv(name, value)
        code, err, _ = classify(capsys, model, data, "--overwrite")
        assert_one_line_error(code, err, f"{name}={value!r} is not")
        monkeypatch.delenv(name)


def test_deeply_nested_json_lines_are_one_line_errors(capsys, model, tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "ok", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    code, err, _ = classify(capsys, model, path)
    assert_one_line_error(code, err, "line 2 nests arrays or objects too deep")


def test_text_label_and_split_columns_must_differ(capsys, model, tmp_path):
    data = tmp_path / "in.csv"
    make_corpus(30, seed=0).to_csv(data, index=False)
    code, err = cli(capsys, "train", "--train", str(data), "--out", str(tmp_path / "m"), "--text-column", "label",
                    *TINY, "--init", "none")
    assert_one_line_error(code, err, "must be different columns")
    code, err = cli(capsys, "evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "e"),
                    "--label-column", "text")
    assert_one_line_error(code, err, "must be different columns")


def test_baseline_never_replaces_a_file_unasked(capsys, tmp_path):
    data, test, out = tmp_path / "in.csv", tmp_path / "test.csv", tmp_path / "mine.json"
    make_corpus(40, seed=0).to_csv(data, index=False)
    make_corpus(20, seed=1).to_csv(test, index=False)
    out.write_text('{"user": 1}')
    code, err = cli(capsys, "baseline", "--train", str(data), "--test", str(test), "--out", str(out))
    assert_one_line_error(code, err, "already exists; pass --overwrite")
    assert out.read_text() == '{"user": 1}'
    assert cli(capsys, "baseline", "--train", str(data), "--test", str(test), "--out", str(out), "--overwrite")[0] == 0
    assert "accuracy" in json.loads(out.read_text())


def test_model_files_that_disagree_are_refused(capsys, model, tmp_path):
    """A repeated label in config.json, labels.json naming others, or a larger tokenizer come from different
    models: exit 2, before any row is read. (A smaller tokenizer is allowed: a start may pad its embeddings.)"""
    data = tmp_path / "in.csv"
    pd.DataFrame({"text": ["the team won"]}).to_csv(data, index=False)
    cases = {"repeat": lambda d: _edit_config(d, labels=["politics", "politics", "tech"]),
             "listed": lambda d: (d / "labels.json").write_text('["a", "b", "c"]'),
             "tokenizer": lambda d: shutil.copy(_larger_tokenizer(tmp_path), d / "tokenizer.json")}
    phrases = {"repeat": "repeats the label(s) 'politics'", "listed": "labels.json and config.json name different",
               "tokenizer": "the files come from different models"}
    for name, damage in cases.items():
        bad = tmp_path / name
        shutil.copytree(model, bad)
        damage(bad)
        code, err, _ = classify(capsys, bad, data, "--overwrite")
        assert_one_line_error(code, err, phrases[name])


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _larger_tokenizer(tmp_path: Path) -> Path:
    from pipelines.data.bpe_tokenizer import train_tokenizer
    path = tmp_path / "large_tokenizer.json"
    train_tokenizer(make_corpus(200, seed=3)["text"], vocab_size=600).save(str(path))
    return path


def test_resume_with_other_model_flags_is_refused(capsys, tmp_path):
    """A model flag given again with --resume that differs from the interrupted run's was silently ignored."""
    data = tmp_path / "train.csv"
    make_corpus(60, seed=0).to_csv(data, index=False)
    out = tmp_path / "run"
    flags = [*TINY, "--init", "none", "--ngrams", "off"]
    assert cli(capsys, "train", "--train", str(data), "--out", str(out), *flags)[0] == 0
    code, err = cli(capsys, "train", "--train", str(data), "--out", str(out), *flags, "--resume", "--d-model", "32",
                    "--dropout", "0.3")
    assert_one_line_error(code, err, "was started with --d-model 16, not 32; --dropout 0.1, not 0.3")
    assert cli(capsys, "train", "--train", str(data), "--out", str(out), *flags, "--resume")[0] == 0


def test_a_file_of_the_users_named_like_the_lock_is_left_alone(capsys, model, tmp_path):
    data, lock = tmp_path / "in.csv", tmp_path / ".in.csv.out.csv.lock"
    pd.DataFrame({"text": ["the team won"]}).to_csv(data, index=False)
    lock.write_text("my notes")
    code, err, _ = classify(capsys, model, data)
    assert_one_line_error(code, err, "is in the way of this job's lock file")
    assert lock.read_text() == "my notes"
    lock.write_text("12345")  # a killed job's stale lock: taken over, and the lock it leaves is one too
    code, err, _ = classify(capsys, model, data)
    assert code == 0 and not lock.exists()
    from pipelines.data.writers import output_lock
    out = tmp_path / "again.csv"
    for _ in range(2):  # what a holder writes is read as a lock by the next one (a killed holder leaves it)
        with output_lock(out, "classify"):
            left = (tmp_path / ".again.csv.lock").read_bytes()
        (tmp_path / ".again.csv.lock").write_bytes(left)
    assert left == str(os.getpid()).encode()

"""End to end through the `txl` command line: train a tiny model on a CSV made here, classify (also after a
SIGKILL), evaluate, and the one-line errors; all in seconds."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from tests.synth import make_corpus

TINY = ["--d-model", "32", "--n-head", "2", "--d-inner", "64", "--n-layer", "1", "--segment-len", "32",
        "--mem-len", "32", "--vocab-size", "300", "--batch-size", "8", "--lr", "3e-3", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    make_corpus(150, seed=1).to_csv(d / "train.csv", index=False)
    make_corpus(60, seed=2).to_csv(d / "test.csv", index=False)
    return d


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "model"
    assert main(["train", "--train", str(data / "train.csv"), "--test", str(data / "test.csv"), "--out", str(out),
                 "--epochs", "6", "--evals-per-epoch", "1", *TINY]) == 0
    return out


def test_train_writes_a_complete_model_directory(model):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "labels.json", "README.md", "metrics.json"):
        assert (model / name).is_file(), name
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9  # the topics are separable: a working model must find them
    # the default fuses an n-gram component: the encoder alone must work too, and the card says so
    assert (model / "ngram.json").is_file() and (model / "ngram.safetensors").is_file()
    assert metrics["test_encoder"]["accuracy"] > 0.9 and metrics["test_ngram"]["accuracy"] > 0.9
    assert metrics["fusion"]["a"] >= 0 and metrics["fusion"]["b"] >= 0
    card = (model / "README.md").read_text()
    assert "fit on the training and validation splits:" in card and "training split alone" in card
    assert "| test |" in card and "| test, encoder alone |" in card and "n-gram scores" in card
    assert json.loads((model / "labels.json").read_text()) == ["politics", "sport", "tech"]


def test_ngrams_off_trains_the_encoder_alone(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    assert main(["train", "--train", str(data / "train.csv"), "--out", str(out), "--epochs", "1", "--ngrams", "off",
                 *TINY]) == 0
    assert not (out / "ngram.json").exists()
    before = json.loads((out / "metrics.json").read_text())
    assert "fusion" not in before
    # `txl fuse` adds the n-gram part afterwards, on the validation split `txl train` carved: the encoder's
    # figure there is the one training measured
    assert main(["fuse", "--model", str(out), "--train", str(data / "train.csv"), "--test", str(data / "test.csv"),
                 "--precision", "float32"]) == 0
    after = json.loads((out / "metrics.json").read_text())
    assert (out / "ngram.json").is_file() and "fusion" in after
    assert after["validation_encoder"]["accuracy"] == before["validation"]["accuracy"]
    assert after["validation_encoder"]["n_documents"] == before["validation"]["n_documents"]
    assert {"test", "test_encoder", "test_ngram", "training"} <= set(after)
    card = (out / "README.md").read_text()
    assert "## N-gram component" in card and "fit on the training and validation splits:" in card
    assert "character 2-5-grams" in card and 0 < after["fusion"]["n_word_terms"] < after["fusion"]["n_terms"]
    # the kept n-grams read every labelled document (the weights were fit on held-out scores before that)
    n_train = json.loads((out / "ngram.json").read_text())["fit_documents"]
    assert n_train == len(pd.read_csv(data / "train.csv")) == 150
    assert after["fusion"]["fit_on"] == "training and validation splits"
    # a training text over the fit's bound is sampled (and not refit: a refit would read as much again), and the
    # console and the card say so
    monkeypatch.setattr("pipelines.model.ngrams.MAX_FIT_CHARS", sum(map(len, pd.read_csv(data / "train.csv").text)) // 3)
    assert main(["fuse", "--model", str(out), "--train", str(data / "train.csv")]) == 0
    sampled = json.loads((out / "ngram.json").read_text())["fit_documents"]
    said = "".join(capsys.readouterr())
    n_split = n_train - before["validation"]["n_documents"]
    assert 0 < sampled < n_split and f"fit on a random {sampled:,} of the {n_split:,} documents of the training split" \
        in said
    assert f"fit on a random {sampled:,} documents of the training split" in (out / "README.md").read_text()
    monkeypatch.undo()
    # --ngrams words: the baseline's word n-grams alone, in the format of the models before character n-grams
    assert main(["fuse", "--model", str(out), "--train", str(data / "train.csv"), "--ngrams", "words"]) == 0
    words = json.loads((out / "metrics.json").read_text())["fusion"]
    assert words["n_word_terms"] == words["n_terms"] and "n_words" not in json.loads((out / "ngram.json").read_text())
    assert "character" not in (out / "README.md").read_text().split("## N-gram component")[1]
    assert main(["fuse", "--model", str(out), "--train", str(data / "test.csv")]) == 0  # same labels: allowed
    frame = pd.read_csv(data / "train.csv")
    frame.loc[frame.label == "tech", "label"] = "science"
    frame.to_csv(tmp_path / "other.csv", index=False)
    assert main(["fuse", "--model", str(out), "--train", str(tmp_path / "other.csv")]) == 2  # other labels: refused


def test_fused_predictions_report_each_part_and_the_terms(model, data):
    from pipelines.model.inference import predict, prepare
    from pipelines.model.model_dir import load_model_dir

    md = prepare(load_model_dir(model), precision="float32")
    assert md.ngram is not None
    texts = pd.read_csv(data / "test.csv")["text"].tolist()[:12]
    preds = predict(md, texts, explain=True)
    assert all(p.encoder_label in md.labels and p.ngram_label in md.labels for p in preds)
    assert all(abs(sum(p.probs.values()) - 1) < 1e-5 for p in preds)
    for p in preds:  # the terms push toward the predicted class and come from the document
        assert p.terms and all(v > 0 for _, v in p.terms)
    assert all(t.split()[0] in text for p, text in zip(preds, texts) for t, _ in p.terms)
    md.ngram = None  # the same directory read without its n-grams predicts as the encoder alone
    assert [p.label for p in predict(md, texts)] == [p.encoder_label for p in preds]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only add contention on 2 cores


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=ENV)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_classify_keeps_every_row_and_column(model, data, tmp_path, suffix):
    out = tmp_path / f"pred.{suffix}"
    assert main(["classify", "--model", str(model), "--input", str(data / "test.csv"), "--output", str(out),
                 "--top-k", "2", "--chunk-rows", "16"]) == 0
    source = pd.read_csv(data / "test.csv")
    got = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[suffix](out)
    assert list(got["id"].astype(str)) == list(source["id"].astype(str))  # CSV cells are kept as text
    assert {"predicted_label", "score", "prob_sport", "top2_label", "error"} <= set(got.columns)
    probs = got[["prob_politics", "prob_sport", "prob_tech"]].sum(axis=1)
    assert ((probs - 1).abs() < 1e-5).all()
    assert (got["predicted_label"] == source["label"]).mean() > 0.9
    assert not Path(str(out) + ".partial").exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_classify_progress_knows_the_row_count(model, data, tmp_path, capsys, suffix):
    """The bar has a total, so it shows time left: exact from the first chunk for Parquet (its footer counts
    the rows), estimated from the bytes read for text files, and exact once the file is read."""
    src = tmp_path / f"in.{suffix}"
    frame = pd.read_csv(data / "test.csv")
    frame.to_parquet(src) if suffix == "parquet" else frame.to_csv(src, index=False)
    assert main(["classify", "--model", str(model), "--input", str(src), "--output", str(tmp_path / "out.csv"),
                 "--chunk-rows", "16"]) == 0
    renders = [r for r in capsys.readouterr().err.replace("\n", "\r").split("\r") if "doc" in r]
    assert f"{len(frame)}/{len(frame)}" in renders[-1], renders[-1]
    if suffix == "parquet":
        assert all(f"/{len(frame)} " in r for r in renders), renders


def test_classify_after_sigkill_loses_and_repeats_nothing(model, tmp_path):
    big = pd.concat([make_corpus(60, seed=s) for s in range(10)], ignore_index=True)
    big["id"] = range(len(big))
    src = tmp_path / "in.csv"
    big.to_csv(src, index=False)
    whole, killed = tmp_path / "whole.csv", tmp_path / "killed.csv"
    args = ["classify", "--model", str(model), "--input", str(src), "--chunk-rows", "40", "--precision", "float32"]
    assert main([*args, "--output", str(whole)]) == 0
    partial = Path(str(killed) + ".partial")
    for parts_before_kill in (2, 5, 9):  # three kills, each after more chunks are done
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args, "--output", str(killed)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(partial.glob("part-*"))) < parts_before_kill:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not killed.exists() and len(list(partial.glob("part-*"))) >= parts_before_kill
    assert main([*args, "--output", str(killed)]) == 0
    a, b = pd.read_csv(whole), pd.read_csv(killed)
    assert list(b["id"]) == list(range(len(big)))
    pd.testing.assert_frame_equal(a, b)


def test_train_resumes_after_sigkill(data, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--train", str(data / "train.csv"), "--out", str(out),
           "--epochs", "3", "--evals-per-epoch", "2", "--patience", "100", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(state.read_text())["step"]
    assert step_at_kill > 0
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-500:]
    final = json.loads(state.read_text())
    assert final["step"] == 3 * 17  # 135 train docs / 8 per batch = 17 steps per epoch, none repeated
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_a_resumed_run_keeps_the_interrupted_runs_model(data, tmp_path):
    """--resume rebuilds the checkpoint's model (here bidirectional), whichever model flags it repeats."""
    out = tmp_path / "model"
    args = ["train", "--train", str(data / "train.csv"), "--out", str(out), "--evals-per-epoch", "1", *TINY]
    assert main([*args, "--epochs", "1", "--attention", "bidirectional", "--pooling", "max"]) == 0
    assert json.loads((out / "checkpoint" / "config.json").read_text())["bidirectional"]
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["bidirectional"] and config["pooling"] == "max"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2 * 17


def test_evaluate_writes_metrics_png_and_table(model, data, tmp_path):
    frame = pd.read_csv(data / "test.csv")
    frame.loc[0, "label"] = "weather"  # a label the model never saw
    frame.to_csv(tmp_path / "eval.csv", index=False)
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "eval.csv"), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_documents"] == 60 and metrics["labels_unknown_to_model"] == ["weather"]
    assert {"accuracy", "macro_f1", "micro_f1", "per_class"} <= set(metrics)
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000
    assert "precision" in (tmp_path / "ev" / "per_class.csv").read_text()
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv", keep_default_na=False)
    assert pred["text"].tolist() == frame["text"].tolist() and pred["label"].tolist() == frame["label"].tolist()
    assert (pred["predicted_label"] == pred["label"]).mean() == pytest.approx(metrics["accuracy"])
    assert {"score", "prob_politics", "prob_sport", "prob_tech", "error"} <= set(pred.columns)
    assert not (tmp_path / "ev" / "predictions.partial").exists()
    for part in ("encoder", "ngram"):  # each part of the fused model measured on the same documents
        assert metrics["components"][part]["accuracy"] == pytest.approx((pred[f"{part}_label"] == pred["label"]).mean())


def test_training_stores_a_notice_that_flags_foreign_text_and_spares_its_own_kind(model, data, tmp_path):
    """confidence.json is measured on validation at training time: a text whose words the model never saw, or
    that reads as no topic, gets the notice with its reason; most test documents of the training topics do not."""
    from pipelines.model.inference import predict, prepare
    from pipelines.model.model_dir import load_model_dir

    md = prepare(load_model_dir(model), precision="float32")
    assert md.confidence is not None and md.confidence.min_coverage is not None
    assert "Low-confidence notice" in (model / "README.md").read_text()
    texts = pd.read_csv(data / "test.csv")["text"].tolist()
    foreign = ["le gouvernement français prépare une réforme des retraites pour les salariés du privé",
               "preheat oven butter flour sugar eggs whisk bake minutes golden cake"]
    preds = predict(md, texts + foreign)
    assert all("of its words are in the model's vocabulary" in p.notice for p in preds[-2:])
    assert sum(bool(p.notice) for p in preds[:-2]) <= 0.2 * len(texts)
    # and `txl classify` writes it in the notice column
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(foreign) + "\n")
    assert main(["classify", "--model", str(model), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.csv")]) == 0
    assert pd.read_csv(tmp_path / "out.csv", keep_default_na=False)["notice"].str.startswith("low confidence").all()


def test_evaluate_explains_calibrates_and_measures_the_notice(model, data, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    (copy / "confidence.json").unlink()
    args = ["evaluate", "--model", str(copy), "--data", str(data / "test.csv"), "--out", str(tmp_path / "ev"),
            "--explain", "2", "--calibrate"]
    assert main(args) == 0
    from pipelines.model.confidence import Calibration

    cal = Calibration.load(copy)
    assert cal is not None and cal.n_documents == 60 and 0 < cal.min_probability <= 1
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv", keep_default_na=False)
    for text, column in zip(pred["text"], pred["explanation"]):  # the top 2 parts, as character spans of the text
        parts = json.loads(column)
        assert 1 <= len(parts) <= 2 and all(0 <= p["start"] < p["end"] <= len(text) for p in parts)
        assert abs(parts[0]["effect"]) >= abs(parts[-1]["effect"])
    assert "notice" not in json.loads((tmp_path / "ev" / "metrics.json").read_text())  # it had none then
    # measured again only when asked: the thresholds are the model's
    assert main([*args[:5], "--out", str(tmp_path / "ev2"), "--calibrate"]) == 2
    assert main([*args[:5], "--out", str(tmp_path / "ev2"), "--calibrate", "--overwrite"]) == 0
    metrics = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    pred = pd.read_csv(tmp_path / "ev2" / "predictions.csv", keep_default_na=False)
    share = (pred["notice"] != "").mean()
    assert metrics["notice"]["share"] == pytest.approx(share, abs=1e-6)
    assert cal.flagged == pytest.approx(share, abs=1e-6)


def test_saving_without_ngrams_removes_the_old_ones(model, tmp_path):
    import shutil

    from pipelines.model.model_dir import load_model_dir, save_model_dir

    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    md = load_model_dir(copy)
    md.ngram = None
    save_model_dir(copy, md)
    assert not (copy / "ngram.json").exists() and not (copy / "ngram.safetensors").exists()
    assert load_model_dir(copy).ngram is None


def test_evaluate_continues_after_a_kill(model, data, tmp_path):
    """Killed mid-way, a rerun reuses the finished chunks and ends with the metrics of an uninterrupted run;
    a rerun with another model starts over."""
    whole = tmp_path / "whole"
    assert main(["evaluate", "--model", str(model), "--data", str(data / "test.csv"), "--out", str(whole)]) == 0
    out, part = tmp_path / "ev", tmp_path / "ev" / "predictions.partial"
    cmd = ["evaluate", "--model", str(model), "--data", str(data / "test.csv"), "--out", str(out),
           "--chunk-rows", "5"]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *cmd], env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(part.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(part.glob("part-*.parquet")))
    assert 2 <= done < 12, "the kill should land mid-way (60 rows in chunks of 5)"
    result = _cli(*cmd)
    assert result.returncode == 0, result.stderr[-500:]
    assert f"{done} chunks reused" in result.stdout or f"{done + 1} chunks reused" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == \
        json.loads((whole / "metrics.json").read_text())["accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), pd.read_csv(whole / "predictions.csv"))
    assert not part.exists()
    part.mkdir()  # left by another job (another model, data set or option): never mixed in
    (part / "job.json").write_text('{"fingerprint": "another job"}')
    pd.DataFrame({"predicted_label": ["sport"] * 5}).to_parquet(part / "part-000000.parquet")
    assert _cli(*cmd).returncode == 2  # the finished evaluation's files are not replaced unless asked
    result = _cli(*cmd, "--overwrite")
    assert result.returncode == 0 and "belongs to another job; starting over" in result.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), pd.read_csv(whole / "predictions.csv"))


def test_multi_label_end_to_end(tmp_path):
    make_corpus(120, seed=3, multi_label=True).to_csv(tmp_path / "ml.csv", index=False)
    out = tmp_path / "ml"
    assert main(["train", "--train", str(tmp_path / "ml.csv"), "--out", str(out), "--epochs", "2", *TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["multi_label"] is True
    # thresholds tuned on the validation split, one per label, kept with the model and used by classify
    assert len(config["thresholds"]) == 3 and all(0 < t < 1 for t in config["thresholds"])
    assert main(["evaluate", "--model", str(out), "--data", str(tmp_path / "ml.csv"), "--out", str(tmp_path / "ev")]) == 0
    assert "micro_f1" in json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert main(["classify", "--model", str(out), "--input", str(tmp_path / "ml.csv"),
                 "--output", str(tmp_path / "pred.csv")]) == 0
    pred = pd.read_csv(tmp_path / "pred.csv", keep_default_na=False)
    probs = pred[[f"prob_{name}" for name in config["labels"]]].to_numpy()
    for row, label in zip(probs, pred["predicted_label"]):
        chosen = set(label.split("|"))
        expected = {n for n, p, t in zip(config["labels"], row, config["thresholds"]) if p >= t}
        assert chosen == expected | {config["labels"][int(row.argmax())]}  # at least the most probable one


@pytest.mark.parametrize("case, phrase", [
    ("missing_column", "no column"),
    ("one_class", "single class"),
    ("empty_file", "empty"),
    ("no_model", "does not exist"),
])
def test_bad_input_is_one_line_exit_2(data, tmp_path, case, phrase):
    bad = tmp_path / "bad.csv"
    args = ["train", "--train", str(bad), "--out", str(tmp_path / "m"), *TINY]
    if case == "missing_column":
        pd.DataFrame({"txt": ["a b"], "label": ["x"]}).to_csv(bad, index=False)
    elif case == "one_class":
        pd.DataFrame({"text": ["a b c"] * 5, "label": ["x"] * 5}).to_csv(bad, index=False)
    elif case == "empty_file":
        bad.write_text("")
    else:
        args = ["classify", "--model", str(tmp_path / "nope"), "--input", str(data / "test.csv"),
                "--output", str(tmp_path / "o.csv")]
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if "error" in line]) == 1 and "Traceback" not in result.stderr
    assert phrase in result.stderr.lower()


def test_refit_ngrams_keep_the_weights_fit_on_held_out_scores(model, data):
    from pipelines.data.labeled_texts import Columns, load_train_valid
    from pipelines.model.inference import prepare
    from pipelines.model.model_dir import load_model_dir
    from pipelines.training.fusion_stage import fuse_ngrams

    md = prepare(load_model_dir(model), precision="float32")
    split = load_train_valid(data / "train.csv", None, columns=Columns(), seed=0)
    texts, _, vtexts, vlabels = split
    held = fuse_ngrams(md, *split, refit=False)
    first = md.ngram
    kept = fuse_ngrams(md, *split, refit=True)
    second = md.ngram
    # the validation figures and the weights come from n-grams that never saw the validation split, either way
    assert {k: v for k, v in held.items() if k != "fusion"} == {k: v for k, v in kept.items() if k != "fusion"}
    assert first.fusion == second.fusion and held["fusion"]["a"] == kept["fusion"]["a"]
    assert first.fit_documents == len(texts) and second.fit_documents == len(texts) + len(vtexts)
    assert held["fusion"]["fit_on"] == "training split" and kept["fusion"]["fit_on"] == "training and validation splits"
    # ... and the n-grams kept have read the validation documents: they fit them at least as well as before
    right = lambda ngram: (ngram.scores(vtexts).argmax(1) == [md.labels.index(y) for y in vlabels]).mean()  # noqa: E731
    assert right(second) >= right(first) and right(second) == 1.0


def test_fusion_never_scores_below_its_better_part_on_validation(model, data, monkeypatch):
    """An encoder that says nothing useful (random weights) and fusion weights that trust it: the stage keeps
    the n-grams alone, and the kept model predicts what the n-grams alone predict."""
    import torch

    from pipelines.data.labeled_texts import Columns, load_train_valid
    from pipelines.model.inference import predict, prepare
    from pipelines.model.model_dir import load_model_dir
    from pipelines.training import fusion_stage

    md = prepare(load_model_dir(model), precision="float32")
    torch.manual_seed(0)
    for p in md.model.parameters():  # an untrained encoder: its predictions are noise
        p.data.normal_(0, 0.5)
    monkeypatch.setattr(fusion_stage, "fit_fusion", lambda *a, **k: {"a": 5.0, "b": 0.01, "c": 0.0})
    split = load_train_valid(data / "train.csv", None, columns=Columns(), seed=0)
    out = fusion_stage.fuse_ngrams(md, *split, refit=False)
    parts = [out[k]["accuracy"] for k in ("validation_encoder", "validation_ngram")]
    assert out["fusion"]["kept"] == "ngram" and parts[0] < parts[1]
    assert out["validation"]["accuracy"] == max(parts)
    preds = predict(md, split[2])
    assert [p.label for p in preds] == [p.ngram_label for p in preds]
    assert "the n-grams alone scored higher" in fusion_stage.fit_phrase(out["fusion"], 100, 10)[1]
    assert fusion_stage._better_part({"validation": {"accuracy": 0.9}, "validation_ngram": {"accuracy": 0.9},
                                      "validation_encoder": {"accuracy": 0.5}}, multi_label=False) == "fused"


def test_a_fitted_mix_below_a_part_moves_to_the_nearest_mix_that_is_not():
    """Ten validation documents, each part wrong on one: the fitted weights (b / a = 1) get both wrong (8 of
    10), b / a above 2 or below 1/3 gets one wrong (9 of 10, as each part alone): the nearest is chosen, toward
    the n-grams first at equal distance; no mix gets all ten."""
    import torch

    from pipelines.training import fusion_stage

    e = torch.tensor([3.0] * 8 + [1.0, -1.0])  # the encoder's margin for the right label
    n = torch.tensor([3.0] * 8 + [-3.0, 0.5])  # the n-grams'
    encoder, scores = torch.stack([torch.zeros(10), e], 1), torch.stack([torch.zeros(10), n], 1).numpy()
    truth = torch.ones(10, dtype=torch.long)
    shift = fusion_stage.nearest_mix({"a": 1.0, "b": 1.0}, encoder, scores, truth, floor=0.9)
    assert shift == 0.75  # log 2 = 0.69 is the least move that gets the last document right
    w = fusion_stage._shifted({"a": 1.0, "b": 1.0}, shift)
    assert w["b"] / w["a"] == pytest.approx(math.exp(0.75), rel=1e-4) and w["a"] * w["b"] == pytest.approx(1.0)
    assert fusion_stage.nearest_mix({"a": 1.0, "b": 1.0}, encoder, scores, truth, floor=1.0) is None
    assert "moved by a factor 2.12" in fusion_stage.fit_phrase({"a": 1.0, "b": 1.0, "shift": 0.75}, 100, 10)[1]

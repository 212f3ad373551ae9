"""benchmarks.accuracy's bookkeeping, with `txl` replaced by a fake: a training stopped by its budget is
resumed by the next run under `--continue-later` (and evaluated at once without it), and a finished data set
is not retrained."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import accuracy as accuracy_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def accuracy(monkeypatch):
    module = accuracy_script
    calls, budget_runs = [], iter(["time budget of 1 min reached", ""])  # first run stops early, second finishes

    def fake_txl(*args):
        calls.append(args)
        flag = lambda name: Path(args[args.index(name) + 1])  # noqa: E731
        metrics = {"accuracy": 0.9, "macro_f1": 0.8, "micro_f1": 0.9, "n_documents": 10}
        if args[0] == "baseline":
            flag("--out").write_text(json.dumps(metrics))
        elif args[0] == "train":
            out = flag("--out")
            (out / "checkpoint").mkdir(parents=True, exist_ok=True)
            (out / "checkpoint" / "state.json").write_text(json.dumps(
                {"stopped": next(budget_runs), "epoch": 0, "step": 5, "seconds": 60.0}))
            (out / "metrics.json").write_text(json.dumps({"training": {"minutes": 1.0, "precision": "float32"}}))
        elif args[0] == "fuse":  # as `txl fuse` leaves the card: n-grams refit, weights under the prior
            card = json.loads((flag("--model") / "metrics.json").read_text())
            card["fusion"] = {"a": 0.5, "b": 4.0, "c": 0.0, "prior_ratio": 7.0, "n_terms": 100, "n_word_terms": 60,
                              "fit_on": "training and validation splits"}
            (flag("--model") / "metrics.json").write_text(json.dumps(card))
        elif args[0] == "evaluate":
            flag("--out").mkdir(parents=True, exist_ok=True)
            fused = "fusion" in json.loads((flag("--model") / "metrics.json").read_text())
            parts = {"components": {"encoder": {**metrics, "accuracy": 0.85}, "ngram": metrics}} if fused else {}
            (flag("--out") / "metrics.json").write_text(json.dumps({**metrics, **parts}))
        return ""

    monkeypatch.setattr(module, "txl", fake_txl)
    return module, calls


def test_a_budget_stop_is_resumed_by_the_next_run(accuracy, tmp_path, capsys):
    module, calls = accuracy
    assert module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm", continue_later=True) is None
    assert "rerun with a larger --max-minutes" in capsys.readouterr().out
    assert [c[0] for c in calls] == ["baseline", "train"] and "--resume" not in calls[1]
    row = module.run_one("r8", tmp_path / "data", tmp_path, 2, "minilm", continue_later=True)
    assert [c[0] for c in calls] == ["baseline", "train", "train", "evaluate"] and "--resume" in calls[2]
    assert row["accuracy"] == 0.9 and row["dataset"] == "r8" and row["recipe"] == "minilm"
    assert row["train_precision"] == "float32" and row["cpu"] in ("AVX512-BF16", "no bf16 units")
    assert f"| {row['cpu']}, float32 |" in module.table([row], "test machine")  # the row says what it ran on
    module.run_one("r8", tmp_path / "data", tmp_path, 2, "minilm", continue_later=True)  # done: nothing rerun
    assert len(calls) == 4


def test_without_continue_later_a_budget_stop_is_evaluated(accuracy, tmp_path):
    module, calls = accuracy
    row = module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm")
    assert [c[0] for c in calls] == ["baseline", "train", "evaluate"] and row["accuracy"] == 0.9


def test_a_seed_trains_its_own_model_and_row(accuracy, tmp_path):
    """`--seed N` trains into a folder of its own with `txl train --seed N`, beside seed 0's, and its row says so."""
    module, calls = accuracy
    first = module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm")
    second = module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm", seed=2)
    trains = [c for c in calls if c[0] == "train"]
    assert len(trains) == 2 and [c[c.index("--seed") + 1] for c in trains] == ["0", "2"]
    assert (tmp_path / "r8.minilm" / "metrics.json").is_file()
    assert (tmp_path / "r8.minilm.seed2" / "metrics.json").is_file()
    assert (first["seed"], second["seed"]) == (0, 2)
    text = module.table([first, second], "test machine")
    assert "| r8 | minilm (seed 2) |" in text and "| r8 | minilm |" in text
    third = {**second, "seed": 3, "micro_f1": 0.96, "encoder_micro_f1": 0.9}
    assert f"- r8, minilm, {first['cpu']}: 2 seeds (0, 2); test micro-F1 mean 90.00, sd 0.00" in text
    assert not module.seed_summary([first])  # one seed: no summary
    summary = module.seed_summary([first, {**second, "micro_f1": 0.93}, third])
    assert summary[-1] == ("- r8, minilm, %s: 3 seeds (0, 2, 3); test micro-F1 mean 93.00, sd 3.00 (min 90.00, "
                           "max 96.00), encoder alone mean 90.00 (min 90.00, max 90.00)" % first["cpu"])


def test_refuse_fuses_a_trained_model_again_into_a_row_of_its_own(accuracy, tmp_path, capsys):
    """`--refuse`: `txl fuse` on the trained model, then `txl evaluate`; its row has a key of its own beside the
    earlier one (the fusion differs), the table shows the latest, and it and the seed summary say how it was fused."""
    module, calls = accuracy
    assert module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm", refuse=True) is None  # nothing trained
    assert "no trained model" in capsys.readouterr().out and [c[0] for c in calls] == ["baseline"]
    before = module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm")
    after = module.run_one("r8", tmp_path / "data", tmp_path, 1, "minilm", refuse=True)
    assert [c[0] for c in calls] == ["baseline", "train", "evaluate", "fuse", "evaluate"]
    fuse = calls[3]
    assert fuse[fuse.index("--model") + 1] == str(tmp_path / "r8.minilm") and fuse[fuse.index("--seed") + 1] == "0"
    assert module.fused(before) == "no" and module.fused(after) == "yes, refit, prior, chars"
    assert after["ngram_terms"] == {"words": 60, "chars": 40}
    assert after["fusion"]["prior_ratio"] == 7.0 and after["encoder_accuracy"] == 0.85
    assert module.key(before) != module.key(after) and module.key(before)[:3] == module.key(after)[:3]
    text = module.table([before, after], "test machine")
    assert "| r8 | minilm | yes, refit, prior, chars | 10 |" in text
    assert "| r8 | minilm | no |" not in text  # the table shows a model's latest fusion; accuracy.json keeps both
    other = {**after, "seed": 1, "micro_f1": 0.92}
    assert module.seed_summary([after, other])[-1].startswith(
        f"- r8, minilm, {after['cpu']}, n-grams fused, refit, prior, chars: 2 seeds (0, 1); test micro-F1 mean 91.00")


def test_every_recipe_and_ab_variant_is_a_valid_train_command(tmp_path):
    """The scripts' flag lists parse as `txl train` arguments, and start_ab's subsets are disjoint and seeded."""
    import argparse

    import pandas as pd

    from benchmarks import accuracy as script
    from benchmarks import start_ab
    from pipelines.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flags in script.RECIPES.values():
        parser.parse_args(["--train", "t.csv", "--out", "o", *flags])
    for flags in start_ab.VARIANTS.values():
        args = parser.parse_args(["--train", "t.csv", "--out", "o", *start_ab.MINILM, *flags])
        assert args.positions in ("segment", "relative") and args.segment_len == args.mem_len
    data = tmp_path / "data"
    (data / "imdb").mkdir(parents=True)
    pd.DataFrame({"text": [f"review {i}" for i in range(50)], "label": ["pos", "neg"] * 25}).to_csv(
        data / "imdb" / "train.csv.xz", index=False)
    runs = tmp_path / "runs"
    runs.mkdir()
    train, valid = start_ab.subset(data, "imdb", runs, 20, 10, seed=0)
    a, b = pd.read_csv(train), pd.read_csv(valid)
    assert len(a) == 20 and len(b) == 10 and not set(a.text) & set(b.text)
    again, _ = start_ab.subset(data, "imdb", tmp_path, 20, 10, seed=0)
    assert pd.read_csv(again).equals(a)


def test_gpu_session_fakes_the_extra_and_keeps_its_deadline(tmp_path, monkeypatch, capsys):
    """benchmarks.gpu_session: the staged start is what `--init minilm` resolves to in a fresh process,
    a data set whose budget would end past the deadline is skipped, and each finished one leaves its row."""
    import subprocess
    import sys

    from benchmarks import accuracy as script  # what gpu_session.run imports
    from benchmarks import gpu_session as session

    monkeypatch.setattr(session, "STAGE", tmp_path / "stage")
    site = session.fake_extra()
    (tmp_path / "stage" / "minilm").mkdir(parents=True)
    (tmp_path / "stage" / "minilm" / "model.safetensors").write_bytes(b"")
    found = subprocess.run([sys.executable, "-c", "from pipelines.training.starts import resolve, minilm_available; "
                            "print(minilm_available(), resolve('minilm'))"], capture_output=True, text=True,
                           cwd=ROOT, env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert found.stdout.split() == ["True", str(tmp_path / "stage" / "minilm")], found.stderr

    for name in ("PYTHONPATH", "PYTHONUNBUFFERED"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # run() sets them: restored after the test
    monkeypatch.setattr(script, "txl", script.txl)  # run() replaces it: restored after the test
    ran, now = [], [0.0]

    def two_minutes(name, *args):
        ran.append(name)
        now[0] += 120
        return {"dataset": name, "cpu": "x"}

    monkeypatch.setattr(script, "run_one", two_minutes)
    monkeypatch.setattr(session.time, "time", lambda: now[0])
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert session.run(["imdb", "20newsgroups"], max_minutes=1, deadline_minutes=3.5) == 0
    assert ran == ["imdb"]  # after imdb's 2 minutes, 20newsgroups' 1 + 2 would end past the 3.5
    # the default recipe is txl train's own
    assert json.loads((tmp_path / "out" / "imdb.minilm-lr3e-5-fresh1e-4.row.json").read_text())["dataset"] == "imdb"
    assert "20newsgroups skipped" in capsys.readouterr().out


"""benchmarks/accuracy.py's bookkeeping, with `txl` replaced by a fake: a training stopped by its budget is
resumed by the next run under `--continue-later` (and evaluated at once without it), and a finished data set
is not retrained."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def accuracy(monkeypatch):
    spec = importlib.util.spec_from_file_location("accuracy_script", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
        elif args[0] == "evaluate":
            flag("--out").mkdir(parents=True, exist_ok=True)
            (flag("--out") / "metrics.json").write_text(json.dumps(metrics))
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


def test_every_recipe_and_ab_variant_is_a_valid_train_command(tmp_path):
    """The scripts' flag lists parse as `txl train` arguments, and start_ab's subsets are disjoint and seeded."""
    import argparse
    import sys

    import pandas as pd

    from pipelines.train import add_arguments

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("start_ab_script", ROOT / "benchmarks" / "start_ab.py")
        start_ab = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(start_ab)
        import accuracy as script
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
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

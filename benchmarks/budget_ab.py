"""A budget-bound `txl train` with this checkout against another commit: the same data, flags and
`--max-minutes`, one after the other on the same machine; prints each run's steps and its validation (and
test) accuracy from the model's metrics.json.

    python -m benchmarks.budget_ab --dataset bbc_news --minutes 12 --against b56c301 [--test] \\
        [--recipe minilm] [--runs runs/budget_ab]

Against b56c301, the commit before `txl train` fitted its learning-rate schedule to the time budget, it measures
what that fit gives a run that the budget stops before its planned epochs. The other commit is checked out into
a temporary `git worktree` and run from there (`python -m pipelines.cli` with the worktree as its working
directory, so its `pipelines` and `txl_core` are the ones imported). The encoder alone (`--ngrams off`).
Rerunnable: a run whose model directory has metrics is not repeated.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.accuracy import DATASETS, RECIPES

ROOT = Path(__file__).resolve().parents[1]


def train(tree: Path, out: Path, args) -> dict:
    if not (out / "metrics.json").is_file():
        train_file, test_file = (str((args.data / f).resolve()) for f in DATASETS[args.dataset])
        cmd = [sys.executable, "-m", "pipelines.cli", "train", "--train", train_file, "--out", str(out.resolve()),
               "--max-minutes", str(args.minutes), "--ngrams", "off", *RECIPES[args.recipe],
               *(["--test", test_file] if args.test else [])]
        subprocess.run(cmd, cwd=tree, check=True)
    return json.loads((out / "metrics.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--dataset", default="bbc_news", choices=list(DATASETS))
    p.add_argument("--minutes", type=float, required=True, help="the --max-minutes of both runs")
    p.add_argument("--against", required=True, help="the other commit (e.g. HEAD~1)")
    p.add_argument("--recipe", default="minilm", choices=list(RECIPES))
    p.add_argument("--test", action="store_true", help="also measure the test split (after the budget)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "budget_ab")
    args = p.parse_args(argv)
    runs = args.runs / f"{args.dataset}.{args.recipe}.{args.minutes:g}min"
    runs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(other), args.against], cwd=ROOT, check=True)
        try:
            arms = {args.against: train(other, runs / f"against-{args.against}", args),
                    "this checkout": train(ROOT, runs / "this", args)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=True)
    for name, m in arms.items():
        t = m["training"]
        test = f", test {100 * m['test']['accuracy']:.2f}" if "test" in m else ""
        print(f"{args.dataset}, {args.minutes:g} min, {name}: {t['steps']} steps "
              f"({t['minutes']:.1f} min, {t['stopped']}), validation {100 * m['validation']['accuracy']:.2f} "
              f"(macro-F1 {100 * m['validation']['macro_f1']:.2f}){test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

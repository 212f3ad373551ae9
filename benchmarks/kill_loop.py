"""Kill-and-resume figures for docs/RELIABILITY.md: `txl classify` and `txl train` are killed with SIGKILL at
random moments, rerun, and checked against an uninterrupted run.

    python benchmarks/kill_loop.py [--rows 20000] [--kills 20] [--train-kills 4] [--seed 0]

classify: a `--rows`-row CSV and a tiny untrained model (tests/tiny_model.py); the final output must equal an
uninterrupted run's, every row exactly once. train: a tiny recipe killed mid-epoch `--train-kills` times, rerun
with --resume; after every kill the model directory must load (never half-written) and the run must finish
with the step count of an uninterrupted one. Prints the figures as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script run from anywhere: the tests' helpers build the model and data

from pipelines.errors import UserError  # noqa: E402
from pipelines.data.labels import stratified_split  # noqa: E402
from pipelines.model.model_dir import load_model_dir  # noqa: E402
from tests.synth import make_corpus  # noqa: E402
from tests.tiny_model import make_model_dir  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TINY = ["--d-model", "16", "--n-head", "2", "--d-inner", "32", "--n-layer", "1", "--segment-len", "32",
        "--mem-len", "32", "--vocab-size", "300", "--batch-size", "8", "--seed", "0"]


def txl(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def run_killed(cmd: list[str], *, kills: int, rng: random.Random, window: float, ready=lambda: True,
               after_kill=lambda: None, finish: bool = True) -> dict:
    """Start `cmd`, SIGKILL it after a random time in (0, window] once `ready()`, `kills` times; then run it to
    the end when `finish`. Returns the number of kills that landed, of runs, and the wall time."""
    landed, runs, started = 0, 0, time.time()
    while landed < kills:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        runs += 1
        while not ready() and proc.poll() is None:
            time.sleep(0.02)
        try:
            proc.wait(timeout=rng.uniform(0.05, window))
            return {"kills": landed, "runs": runs, "seconds": round(time.time() - started, 1), "finished_early": True}
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            landed += 1
            after_kill()
    if not finish:
        return {"kills": landed, "runs": runs, "seconds": round(time.time() - started, 1), "finished_early": False}
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        raise SystemExit(f"the final run failed ({done.returncode}): {done.stderr[-500:]}")
    return {"kills": landed, "runs": runs + 1, "seconds": round(time.time() - started, 1), "finished_early": False}


def classify_figures(work: Path, *, rows: int, kills: int, rng: random.Random) -> dict:
    model = make_model_dir(work / "model")
    frame = make_corpus(rows, seed=11, long_every=50)
    frame["id"] = range(rows)
    frame.to_csv(work / "in.csv", index=False)
    args = ["classify", "--model", str(model), "--input", str(work / "in.csv"), "--chunk-rows", "500",
            "--precision", "float32"]
    t0 = time.time()
    subprocess.run(txl(*args, "--output", str(work / "whole.csv")), check=True, env=ENV, capture_output=True)
    whole_s = time.time() - t0
    figures = run_killed(txl(*args, "--output", str(work / "killed.csv")), kills=kills, rng=rng,
                         window=whole_s * 2 / max(kills, 1) + 2)
    a, b = pd.read_csv(work / "whole.csv"), pd.read_csv(work / "killed.csv")
    once = sorted(b["id"]) == list(range(rows)) and b["id"].is_unique
    return {**figures, "rows": rows, "uninterrupted_seconds": round(whole_s, 1), "every_row_once": bool(once),
            "identical": bool(a.equals(b))}


def train_figures(work: Path, *, kills: int, rng: random.Random) -> dict:
    make_corpus(400, seed=12).to_csv(work / "train.csv", index=False)
    out = work / "trained"
    cmd = txl("train", "--train", str(work / "train.csv"), "--out", str(out), "--epochs", "3",
              "--evals-per-epoch", "4", "--patience", "100", *TINY)
    loadable, checks = [], []

    def check_model_dir():  # right after a kill: either no model yet, or a whole one
        if (out / "config.json").exists():
            try:
                load_model_dir(out)
                loadable.append(True)
            except UserError as e:
                loadable.append(False)
                checks.append(str(e))

    ready = lambda: (out / "checkpoint" / "state.json").exists()  # noqa: E731 - killed once it has a checkpoint
    first = run_killed(cmd, kills=1, rng=rng, window=6.0, ready=ready, after_kill=check_model_dir,
                       finish=False)
    rest = run_killed([*cmd, "--resume"], kills=kills - 1, rng=rng, window=6.0, after_kill=check_model_dir)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    labels = list(pd.read_csv(work / "train.csv")["label"])
    steps_per_epoch = -(-len(stratified_split(labels, valid_fraction=0.1, seed=0)[0]) // 8)
    load_model_dir(out)
    return {"kills": first["kills"] + rest["kills"], "runs": first["runs"] + rest["runs"],
            "model_dir_checks": len(loadable), "model_dir_always_loadable": all(loadable),
            "failures": checks[:3], "final_step": state["step"], "uninterrupted_step_count": 3 * steps_per_epoch,
            "seconds": round(first["seconds"] + rest["seconds"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--train-kills", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="txl-kill-") as tmp:
        work = Path(tmp)
        (work / "c").mkdir(), (work / "t").mkdir()
        result = {"classify": classify_figures(work / "c", rows=args.rows, kills=args.kills, rng=rng),
                  "train": train_figures(work / "t", kills=args.train_kills, rng=rng)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

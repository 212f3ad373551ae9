"""Kill-and-resume figures for docs/RELIABILITY.md: `txl classify` and `txl train` are killed with SIGKILL at
random moments, rerun, and checked against an uninterrupted run.

    python -m benchmarks.kill_loop [--rows 20000] [--kills 20] [--train-kills 4] [--seed 0]

classify: a `--rows`-row CSV of synthetic documents (`make_corpus`) and a tiny untrained model (`make_model_dir`,
as the tests build them); the final output must equal an uninterrupted run's, every row exactly once. train: a
tiny recipe killed mid-epoch `--train-kills` times, rerun with --resume; after every kill the model directory must
load (never half-written) and the run must finish with the step count of an uninterrupted one. Prints the
figures as one JSON object.
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
import torch

from pipelines.data.bpe_tokenizer import train_tokenizer
from pipelines.data.labels import stratified_split
from pipelines.errors import UserError
from pipelines.model.model_dir import ModelDir, load_model_dir, save_model_dir
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TINY = ["--d-model", "16", "--n-head", "2", "--d-inner", "32", "--n-layer", "1", "--segment-len", "32",
        "--mem-len", "32", "--vocab-size", "300", "--batch-size", "8", "--seed", "0"]
# Three topics with words of their own in a shared filler vocabulary (the corpus of tests/synth.py).
TOPICS = {
    "sport": "match goal team player coach season league score win cup".split(),
    "tech": "software chip computer network data code cloud device phone robot".split(),
    "politics": "minister vote election party government law policy parliament tax debate".split(),
}
FILLER = "the a of and to in is was for on that with as by it this at from".split()


def make_corpus(n: int, *, seed: int = 0, long_every: int = 7) -> pd.DataFrame:
    """`n` seeded documents (id, text, label), a topic each in turn; every `long_every`-th is 150-400 words long,
    the others 8-60."""
    rng, names = random.Random(seed), sorted(TOPICS)
    rows = []
    for i in range(n):
        labels = [names[i % len(names)]]  # a topic drawn from them per word: tests/synth.py's draws, seed for seed
        n_words = rng.randint(150, 400) if i % long_every == 0 else rng.randint(8, 60)
        words = [rng.choice(TOPICS[rng.choice(labels)]) if rng.random() < 0.3 else rng.choice(FILLER)
                 for _ in range(n_words)]
        rows.append({"id": i, "text": " ".join(words), "label": labels[0]})
    return pd.DataFrame(rows)


def make_model_dir(path: Path, *, seed: int = 0) -> Path:
    """A tiny classifier directory with untrained weights and a real tokenizer, built in a second."""
    labels = sorted(TOPICS)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(make_corpus(60, seed=seed)["text"], vocab_size=300)
    config = TXLConfig(vocab_size=tokenizer.get_vocab_size(), d_model=16, d_embed=16, n_head=2, d_head=8, d_inner=32,
                       n_layer=1, cutoffs=[], div_val=1, mem_len=16, clamp_len=32, same_length=False,
                       segment_len=16, num_labels=len(labels), labels=labels, dropout=0.0)
    save_model_dir(path, ModelDir(TXLDocumentClassifier(config), tokenizer, labels, "# tiny\n", {}))
    return path


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

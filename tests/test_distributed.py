"""Two gloo processes under torchrun do what one process does: the same training steps, the same validation
metric, `--resume`, and the same `txl classify` output, also when continuing an interrupted run.

All the two-process work runs in one torchrun launch (`tests/ddp_worker.py`); each test compares one part of
it with the same work done here in one process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from safetensors.torch import load_file

from pipelines.cli import main
from tests.ddp_worker import run_steps
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir

REPO = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "32", "--n-head", "2", "--d-inner", "64", "--n-layer", "1", "--segment-len", "32",
        "--mem-len", "32", "--vocab-size", "300", "--batch-size", "8", "--lr", "3e-3", "--seed", "0",
        "--dropout", "0", "--patience", "100"]


def _train(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["txl", "train", "--train", str(data / "train.csv"), "--test", str(data / "test.csv"), "--out", str(out),
            "--epochs", str(epochs), *TINY, *extra]


def _classify(data: Path, output: Path) -> list[str]:
    return ["txl", "classify", "--model", str(data / "model"), "--input", str(data / "rows.csv"),
            "--output", str(output), "--chunk-rows", "7", "--precision", "float32"]


def _interrupted(data: Path, output: Path) -> None:
    """Leave the partial folder a killed run leaves: some chunks whole (not the first, not in a row) and one
    half-written; the run is stopped just before it would join the chunks."""
    with mock.patch("pipelines.commands.classify.write_frame", side_effect=KeyboardInterrupt):
        assert main(_classify(data, output)[1:]) != 0
    partial = Path(str(output) + ".partial")
    for k, part in enumerate(sorted(partial.glob("part-*.parquet"))):
        if k % 3 != 1:
            part.unlink()
    (partial / ".part-000004.tmp").write_bytes(b"half a parquet file")
    assert not output.exists()


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, Path]:
    """(data, out): inputs made here, then every two-process job's results under `out`."""
    data, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("two")
    make_corpus(150, seed=1).to_csv(data / "train.csv", index=False)
    make_corpus(60, seed=2).to_csv(data / "test.csv", index=False)
    make_model_dir(data / "model")
    rows = make_corpus(100, seed=4)
    rows.loc[[3, 50], "text"] = ""  # rows without a prediction keep their place too
    rows.to_csv(data / "rows.csv", index=False)
    _interrupted(data, out / "resumed.csv")
    jobs = [["steps"], _train(data, out / "model", 1), _train(data, out / "model", 2, "--resume"),
            _classify(data, out / "fresh.csv"), _classify(data, out / "resumed.csv")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tests.ddp_worker", str(out), json.dumps(jobs)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "stdout.txt").write_text(done.stdout)
    return data, out


def test_two_processes_take_the_steps_of_one(two, tmp_path):
    """Equal losses and gradients (within float rounding) for two steps: a batch split 3 + 2 across both
    backward routes, then a batch of one document that leaves rank 1 nothing; rank 1 started from other
    weights, so this also shows that DDP gave it rank 0's."""
    run_steps(tmp_path)
    one = load_file(str(tmp_path / "rank0.safetensors"))
    ranks = [load_file(str(two[1] / f"rank{r}.safetensors")) for r in (0, 1)]
    assert set(ranks[0]) == set(one) and any(".grad." in k for k in one)
    assert float(one.pop("clock")) == 0 and [float(r.pop("clock")) for r in ranks] == [1, 1]  # max over ranks
    for key, want in one.items():
        assert want.numel() > 0, f"{key}: no gradient"
        assert (ranks[0][key] - want).abs().max() < 1e-5, key
        assert (ranks[1][key] == ranks[0][key]).all(), f"{key}: the ranks drifted apart"


def _metrics(model: Path) -> dict:
    return json.loads((model / "metrics.json").read_text())


def test_two_process_training_matches_one_process_and_resumes(two, tmp_path):
    data, out = two
    assert main(_train(data, tmp_path / "model", 1)[1:]) == 0
    assert main(_train(data, tmp_path / "model", 2, "--resume")[1:]) == 0
    one, both = _metrics(tmp_path / "model"), _metrics(out / "model")
    assert both["training"]["steps"] == one["training"]["steps"] == 2 * 17  # 135 docs / 8: none skipped or repeated
    for split in ("validation", "test"):  # the same steps, up to float rounding: at most a document apart
        assert abs(both[split]["accuracy"] - one[split]["accuracy"]) <= 1 / one[split]["n_documents"] + 1e-9
    assert both["test"]["accuracy"] > 0.9
    assert "x 2 processes" in (out / "model" / "README.md").read_text()


def test_two_process_classify_writes_the_single_process_output(two, tmp_path):
    data, out = two
    assert main(_classify(data, tmp_path / "one.csv")[1:]) == 0
    reference = (tmp_path / "one.csv").read_bytes()
    assert (out / "fresh.csv").read_bytes() == reference
    assert (out / "resumed.csv").read_bytes() == reference  # continued from the interrupted single-process run
    assert "(5 chunks reused from an interrupted run)" in (out / "stdout.txt").read_text()  # 15 chunks, 5 kept
    assert not Path(str(out / "resumed.csv") + ".partial").exists()
    frame = pd.read_csv(out / "fresh.csv", keep_default_na=False)
    assert list(frame["id"]) == list(range(100)) and frame.loc[3, "error"] == "empty text"

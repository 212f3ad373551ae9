"""Inputs that are not regular files, outputs that cannot be written, and two jobs on one output: each gets one
line that says what it is and exit 2, before any work; a job's outputs get the user's usual permissions."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.data import writers
from pipelines.data.writers import output_lock
from pipelines.errors import UserError
from tests.tiny_model import make_model_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("m") / "model")


def _inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere.csv")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    return {"loop": (tmp_path / "loop", "loops back on itself"),
            "dangling": (tmp_path / "dangling", "which does not exist"),
            "fifo": (tmp_path / "fifo", "is a pipe, not a file"),
            "device": (Path("/dev/null"), "is a device, not a file"),
            "folder": (tmp_path / "folder", "is a folder"),
            "missing": (tmp_path / "missing.csv", "not found")}


@pytest.mark.parametrize("kind", ["loop", "dangling", "fifo", "device", "folder", "missing"])
@pytest.mark.parametrize("command", ["classify", "evaluate", "pretrain"])
def test_inputs_that_are_not_files_are_named_for_what_they_are(model, tmp_path, capsys, kind, command):
    path, phrase = _inputs(tmp_path)[kind]
    args = {"classify": ["classify", "--model", str(model), "--input", str(path), "--output", str(tmp_path / "o.csv")],
            "evaluate": ["evaluate", "--model", str(model), "--data", str(path), "--out", str(tmp_path / "ev")],
            "pretrain": ["pretrain", "--text", str(path), "--out", str(tmp_path / "lm"), "--max-minutes", "0.1"]}
    assert main(args[command]) == 2
    err = capsys.readouterr().err.strip()
    assert phrase in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.csv").exists()


def test_a_second_job_on_the_same_output_stops_and_names_the_first(tmp_path):
    out = tmp_path / "o.csv"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pipelines.data.writers import output_lock\n"
                               f"with output_lock({str(out)!r}, 'classify'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            with output_lock(out, "classify"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out, "classify"):  # a killed holder's lock is released with its process
        pass
    assert not (tmp_path / ".o.csv.lock").exists()  # and the lock file goes with the job


def test_a_full_disk_mid_job_is_exit_2_with_the_path_and_no_temporary_file(model, tmp_path, capsys, monkeypatch):
    (tmp_path / "in.csv").write_text("text\n" + "the minister won the vote\n" * 5)

    def full(frames, tmp, fmt):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "_write", full)
    assert main(["classify", "--model", str(model), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "no space left on the disk at" in err and "o.csv" in err and "rerun the same command" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_the_work(model, tmp_path, capsys):
    (tmp_path / "in.csv").write_text("text\nthe minister won the vote\n")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["classify", "--model", str(model), "--input", str(tmp_path / "in.csv"),
                     "--output", str(locked / "o.csv")]) == 2
        assert "cannot write in" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_outputs_get_the_users_usual_permissions(model, tmp_path):
    (tmp_path / "in.csv").write_text("text\nthe minister won the vote\n")
    old = os.umask(0o022)
    try:
        assert main(["classify", "--model", str(model), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "o.csv")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.csv").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


@pytest.mark.parametrize("flags, phrase", [(["--d-model", "33", "--n-head", "2"], "must be even"),
                                           (["--d-model", "4", "--n-head", "8"], "smaller than --n-head"),
                                           (["--d-model", "1000000", "--n-layer", "40"], "more than this machine's")])
def test_model_flags_that_cannot_make_a_model_are_refused_before_reading(tmp_path, capsys, flags, phrase):
    assert main(["train", "--train", str(tmp_path / "never-read.csv"), "--out", str(tmp_path / "m"), *flags]) == 2
    assert phrase in capsys.readouterr().err and not (tmp_path / "m").exists()

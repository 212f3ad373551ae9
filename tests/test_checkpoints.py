"""Resumable checkpoints: written as a whole (a kill at any moment leaves the old one or the new one, never a
mix), every `--save-every` minutes between validations, and a killed `txl train` resumed from one ends with
the same weights as a run that was never interrupted. A new run never overwrites an interrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import die_in_step
from safetensors.torch import load_file

import pipelines.training.trainer as trainer_module
from pipelines.cli import main
from pipelines.training.resume import checkpoint_dir, write_checkpoint
from tests.synth import make_corpus

TINY = ["--d-model", "32", "--n-head", "2", "--d-inner", "64", "--n-layer", "1", "--segment-len", "32",
        "--mem-len", "32", "--vocab-size", "300", "--batch-size", "8", "--lr", "3e-3", "--seed", "0",
        "--dropout", "0.1", "--evals-per-epoch", "1", "--patience", "100"]


def _read(ck: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(ck.iterdir())}


def test_a_checkpoint_replaces_the_previous_one_whole_and_keeps_the_files_it_does_not_name(tmp_path):
    ck = checkpoint_dir(tmp_path)
    ck.mkdir()
    (ck / "tokenizer.json").write_text("tok")  # written once when a run starts
    write_checkpoint(tmp_path, {"weights": "w1", "state.json": "1"})
    write_checkpoint(tmp_path, {"weights": "w2", "state.json": "2"})
    assert _read(ck) == {"state.json": "2", "tokenizer.json": "tok", "weights": "w2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_kill_while_writing_leaves_the_previous_checkpoint(tmp_path):
    write_checkpoint(tmp_path, {"weights": "w1", "state.json": "1"})

    def dies(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, {"weights": dies, "state.json": "2"})
    assert _read(checkpoint_dir(tmp_path)) == {"state.json": "1", "weights": "w1"}
    write_checkpoint(tmp_path, {"weights": "w3", "state.json": "3"})  # the half-written folder is cleared
    assert _read(checkpoint_dir(tmp_path)) == {"state.json": "3", "weights": "w3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_kill_between_the_two_renames_finds_the_previous_checkpoint(tmp_path):
    write_checkpoint(tmp_path, {"weights": "w1", "state.json": "1"})
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # the first rename done, the second not
    (tmp_path / "checkpoint.new").mkdir()
    (tmp_path / "checkpoint.new" / "weights").write_text("w2")
    assert _read(checkpoint_dir(tmp_path)) == {"state.json": "1", "weights": "w1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    make_corpus(150, seed=1).to_csv(d / "train.csv", index=False)  # 135 train documents: 17 batches an epoch
    return d


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--train", str(data / "train.csv"), "--out", str(out), "--epochs", "2", *TINY, *extra])


def test_a_killed_run_resumes_from_its_last_timed_checkpoint_to_the_same_weights(data, tmp_path, monkeypatch):
    """Dropout on, a checkpoint after every step (`--save-every 0`), killed in step 20 of 34 (mid-epoch, after
    the first validation): the resumed run must end bit for bit where the uninterrupted one did, which needs
    the optimiser, the schedule, the random state and the position in the epoch restored."""
    assert _train(data, tmp_path / "whole") == 0
    real_step = die_in_step(monkeypatch, trainer_module.Trainer, 20)
    assert _train(data, tmp_path / "killed", "--save-every", "0") == 130
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"], state["validated_at"]) == (19, 1, 2, 17)
    monkeypatch.setattr(trainer_module.Trainer, "step", real_step)
    assert _train(data, tmp_path / "killed", "--save-every", "0", "--resume") == 0
    for name in ("checkpoint/model.safetensors", "model.safetensors"):  # the last weights, and the best
        whole, resumed = (load_file(str(tmp_path / d / name)) for d in ("whole", "killed"))
        assert whole.keys() == resumed.keys()
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 34


def test_checkpoints_between_validations_follow_save_every(data, tmp_path, monkeypatch):
    saved = []
    real = trainer_module.Trainer.save_checkpoint
    monkeypatch.setattr(trainer_module.Trainer, "save_checkpoint",
                        lambda self: saved.append(self.state.step) or real(self))
    assert _train(data, tmp_path / "rare") == 0  # the default, 10 minutes: at the validations and the end only
    assert saved == [17, 34, 34]
    saved.clear()
    assert _train(data, tmp_path / "often", "--save-every", "0") == 0
    assert saved == list(range(1, 35)) + [34]


def test_a_new_run_refuses_to_overwrite_an_interrupted_one(data, tmp_path, capsys):
    out = tmp_path / "run"
    write_checkpoint(out, {"state.json": json.dumps({"step": 5})})
    assert _train(data, out) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert json.loads((out / "checkpoint" / "state.json").read_text()) == {"step": 5}



def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resume_loses_nothing(data, tmp_path, monkeypatch,
                                                                                   capsys):
    """SIGINT in step 20 of 34 (the default `--save-every`, so the last checkpoint was the validation's at
    step 17): the run finishes step 20, saves a checkpoint there, says how to continue, and exits 130; the
    resumed run ends bit for bit where an uninterrupted one does. SIGINT's handler is the previous one after."""
    import signal
    assert _train(data, tmp_path / "whole") == 0
    real_step, calls = trainer_module.Trainer.step, []

    def signalled_in_step_20(self, batch, elapsed=0.0):
        calls.append(1)
        if len(calls) == 20:
            signal.raise_signal(signal.SIGINT)  # handled before it returns (os.kill: whenever Python looks)
        return real_step(self, batch, elapsed)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(trainer_module.Trainer, "step", signalled_in_step_20)
    capsys.readouterr()
    assert _train(data, tmp_path / "stopped") == 130
    assert signal.getsignal(signal.SIGINT) is before
    err = capsys.readouterr().err
    assert "stopping after this step" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("txl train: interrupted: stopped after step 20 of 34") and "--resume" in last
    state = json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"]) == (20, 1, 3)
    assert state["validated_at"] == 17 and (tmp_path / "stopped" / "model.safetensors").is_file()  # best so far
    monkeypatch.setattr(trainer_module.Trainer, "step", real_step)
    assert _train(data, tmp_path / "stopped", "--resume") == 0
    for name in ("checkpoint/model.safetensors", "model.safetensors"):
        whole, resumed = (load_file(str(tmp_path / d / name)) for d in ("whole", "stopped"))
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name


def test_a_second_ctrl_c_stops_at_once(data, tmp_path, monkeypatch, capsys):
    """Two SIGINTs in one step: the second raises at once (exit 130, the plain message), and the checkpoint
    is the last one written before (the validation's at step 17)."""
    import signal
    real_step, calls = trainer_module.Trainer.step, []

    def signalled_twice_in_step_20(self, batch, elapsed=0.0):
        calls.append(1)
        if len(calls) == 20:
            # raise_signal runs the handler before it returns (os.kill: whenever Python next looks)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real_step(self, batch, elapsed)

    monkeypatch.setattr(trainer_module.Trainer, "step", signalled_twice_in_step_20)
    capsys.readouterr()
    # Ctrl-C as in a terminal: a job a non-interactive shell starts in the background inherits SIGINT ignored,
    # and then the second signal is ignored too (the handler before `txl train`'s)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert _train(data, tmp_path / "run") == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert "txl train: interrupted\n" in err and "--resume" not in err
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 17

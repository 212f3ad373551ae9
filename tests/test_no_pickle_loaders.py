"""Issue 6, "no code from files": a pickle whose loading creates a file is planted under every name a loader reads
(weights, training checkpoint, tokenizer, config, vocabulary) and fed to every loader a user's file can reach;
the file never appears. The payload is first shown to be live under the standard unpickler."""
from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from pipelines.cli import main
from pipelines.data.word_tokenizer import load_tokenizer
from pipelines.errors import UserError
from pipelines.model.model_dir import load_model_dir
from tests.tiny_model import make_model_dir
from txl_core import CheckpointError, WordTokenizer, load_pretrained
from txl_core.safe_pickle import is_inert

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


class Payload:
    """Pickles as `os.system("touch MARKER")`: the standard unpickler runs it while loading."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def plant(path: Path, marker: Path, form: str) -> None:
    """Write the payload at `path`: a raw pickle, or torch.save's legacy or zip format."""
    if form == "pickle":
        path.write_bytes(pickle.dumps({"weights": Payload(marker)}))
    else:
        torch.save({"weights": Payload(marker)}, path, _use_new_zipfile_serialization=form == "torch_zip")


FORMS = ["pickle", "torch_legacy", "torch_zip"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "m")


@pytest.mark.parametrize("form", FORMS)
def test_the_payload_is_live_under_the_standard_unpickler(tmp_path, form):
    plant(tmp_path / "p.bin", tmp_path / "marker", form)
    if form == "pickle":
        pickle.loads((tmp_path / "p.bin").read_bytes())
    else:
        torch.load(tmp_path / "p.bin", weights_only=False)
    assert (tmp_path / "marker").exists(), "the payload must work, or the tests below prove nothing"


def _planted_dir(model: Path, tmp_path: Path, name: str, form: str) -> tuple[Path, Path]:
    bad, marker = tmp_path / "planted", tmp_path / "marker"
    shutil.copytree(model, bad)
    if name == "pytorch_model.bin":  # the reference's layout: the only weights in the folder
        (bad / "model.safetensors").unlink()
    plant(bad / name, marker, form)
    return bad, marker


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json"])
def test_model_loaders_never_run_a_planted_pickle(model, tmp_path, name, form):
    bad, marker = _planted_dir(model, tmp_path, name, form)
    if name != "tokenizer.json":
        with pytest.raises(CheckpointError) as refused:
            load_pretrained(bad)
        if name != "config.json":  # named for what it is, not as damage
            assert "pickle" in str(refused.value) and "never loaded" in str(refused.value), refused.value
    with pytest.raises(UserError) as caught:
        load_model_dir(bad)
    assert "\n" not in str(caught.value)
    if name == "tokenizer.json":
        with pytest.raises(Exception):
            load_tokenizer(bad / name)
    assert not marker.exists()


@pytest.mark.parametrize("form", FORMS)
def test_word_vocabulary_loader_keeps_the_payload_inert(tmp_path, form):
    marker, path = tmp_path / "marker", tmp_path / "vocab.pkl"
    state = {"idx2sym": ["<eos>", "<unk>", "a"], "sym2idx": {"<eos>": 0, "<unk>": 1, "a": 2}, "unk_idx": 1,
             "moses_tokenizer": Payload(marker)}
    if form == "pickle":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=form == "torch_zip")
    assert WordTokenizer.from_pretrained(path).vocab_size == 3
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--model", "--init"])
def test_commands_given_a_planted_model_exit_2(model, tmp_path, capsys, flag):
    bad, marker = _planted_dir(model, tmp_path, "model.safetensors", "torch_zip")
    (tmp_path / "in.csv").write_text("text,label\nthe team won,sport\nthe vote,politics\n" * 5)
    if flag == "--model":
        args = ["classify", "--model", str(bad), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv")]
    else:
        args = ["train", "--init", str(bad), "--train", str(tmp_path / "in.csv"), "--out", str(tmp_path / "new")]
    assert main(args) == 2
    assert "never loaded" in capsys.readouterr().err and not marker.exists()


def test_resume_with_a_planted_optimizer_checkpoint_runs_nothing(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("text,label\nthe team won the cup,sport\nthe minister lost the vote,politics\n" * 6)
    args = ["train", "--train", str(tmp_path / "in.csv"), "--out", str(tmp_path / "m"), "--epochs", "1",
            "--d-model", "16", "--n-head", "2", "--d-inner", "32", "--n-layer", "1", "--segment-len", "16",
            "--mem-len", "16", "--vocab-size", "300"]
    assert main(args) == 0
    marker = tmp_path / "marker"
    plant(tmp_path / "m" / "checkpoint" / "optim.pt", marker, "torch_zip")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # torch.load(weights_only=True) refuses it: a one-line user error
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "UnpicklingError" in err and "delete it" in err and "\n" not in err
    assert not marker.exists()


def test_app_given_a_planted_model_path_shows_an_error(model, tmp_path, monkeypatch):
    bad, marker = _planted_dir(model, tmp_path, "model.safetensors", "pickle")
    monkeypatch.setenv("TXL_MODEL", str(bad))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception and at.error[0].value.startswith("Cannot use this model")
    assert not marker.exists()


def test_safe_load_turns_the_payload_into_a_placeholder(tmp_path):
    from txl_core.safe_pickle import safe_load

    loaded = safe_load(io.BytesIO(pickle.dumps(Payload(tmp_path / "marker"))).getvalue())
    assert is_inert(loaded) and not (tmp_path / "marker").exists()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["ngram.json", "ngram.safetensors"])
def test_the_ngram_files_never_run_a_planted_pickle(model, tmp_path, name, form):
    """The n-gram part is JSON + safetensors: a pickle in either is a damaged file, never code that runs."""
    from pipelines.model.ngrams import fit_ngram
    from tests.synth import make_corpus

    frame = make_corpus(30, seed=5)
    names = sorted(set(frame.label))
    part = fit_ngram(list(frame.text), np.array([names.index(y) for y in frame.label]), multi_label=False,
                     n_labels=len(names))
    bad, marker = tmp_path / "planted", tmp_path / "marker"
    shutil.copytree(model, bad)
    for file, content in part.files().items():
        (bad / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    plant(bad / name, marker, form)
    with pytest.raises(UserError, match="damaged") as caught:
        load_model_dir(bad)
    assert "\n" not in str(caught.value) and not marker.exists()

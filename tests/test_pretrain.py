"""`txl pretrain`: the language model learns, its memory carries information across segments, a stopped or
killed run leaves a usable directory and resumes exactly, the directory is the contract `txl train --init`
relies on, and bad input is one line with exit code 2. Tiny seeded models, a few seconds each."""
from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipelines.cli import main
from pipelines.commands.pretrain import lm_config
from pipelines.data.lm_stream import batchify, encode_stream, n_segments, perplexity, read_documents, segment
from pipelines.model.model_dir import load_lm_dir
from pipelines.training import lm_trainer
from pipelines.training.lm_trainer import LMRecipe, LMTrainer
from txl_core import TXLConfig, TXLLMHeadModel, load_pretrained
from txl_core.classifier import TXLDocumentClassifier

TINY = ["--vocab-size", "300", "--d-model", "32", "--n-head", "2", "--d-inner", "48", "--n-layer", "2",
        "--segment-len", "16", "--mem-len", "16", "--batch-size", "4", "--warmup", "10", "--lr", "3e-3",
        "--seed", "0"]
NOUNS = "cat dog bird fish horse mouse lion tiger bear wolf".split()
VERBS = "sees chases likes finds follows".split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"the {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} ." for _ in range(n)]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "animals.txt"
    path.write_text("\n".join(sentences(300, seed=0)) + "\n")
    return path


@pytest.fixture(scope="module")
def lm_dir(text, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "lm"
    assert main(["pretrain", "--text", str(text), "--out", str(out), "--max-steps", "120", "--dropout", "0",
                 *TINY]) == 0
    return out


def test_the_language_model_beats_the_unigram_perplexity_by_far(lm_dir, text):
    """Unigram perplexity of the whole stream (optimistic: measured on the text itself) is the level a model
    that ignores context reaches; a model that reads the sentences' structure must be far below it."""
    tokenizer = load_lm_dir(lm_dir).tokenizer
    counts = Counter(encode_stream(tokenizer, read_documents([str(text)])).tolist())
    total = sum(counts.values())
    unigram = math.exp(-sum(c / total * math.log(c / total) for c in counts.values()))
    metrics = json.loads((lm_dir / "metrics.json").read_text())
    assert metrics["held_out_ppl"] < 0.5 * unigram, (metrics["held_out_ppl"], unigram)
    assert metrics["steps"] == 120 and metrics["stopped"] == "completed"
    assert "Held-out perplexity" in (lm_dir / "README.md").read_text()


def test_segments_score_every_token_of_each_stream_exactly_once():
    stream = torch.arange(103)
    data = batchify(stream, 4)  # (4, 25)
    parts = [segment(data, i, 7) for i in range(n_segments(data, 7))]
    assert torch.equal(torch.cat([x for x, _ in parts], 1), data[:, :-1])
    assert torch.equal(torch.cat([y for _, y in parts], 1), data[:, 1:])
    assert torch.equal(data[1], stream[25:50])  # rows are contiguous stretches of the stream


def _repeats(n_blocks: int, seed: int, *, period: int = 3, reps: int = 4) -> torch.Tensor:
    """Blocks of `reps` repetitions of `period` random symbols: after the first period, each token equals
    the one `period` steps back, and nothing nearer tells it."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(3, 19, (period,), generator=gen).repeat(reps) for _ in range(n_blocks)])


def _train_copy_model(mem_len: int, tmp_path: Path) -> TXLLMHeadModel:
    torch.manual_seed(0)
    args = argparse.Namespace(d_model=32, n_head=2, d_inner=48, n_layer=1, segment_len=2, mem_len=mem_len,
                              clamp_len=None, dropout=0.0)
    model = TXLLMHeadModel(lm_config(args, 20))
    recipe = LMRecipe(batch_size=8, lr=1e-2, warmup=20, max_steps=150, save_every=1e9)
    LMTrainer(model, recipe, train=_repeats(300, seed=0), out=tmp_path / f"m{mem_len}",
              device=torch.device("cpu")).fit()
    return model


def test_memory_carries_what_a_segment_cannot_see(tmp_path):
    """Segments of 2 tokens, a token that repeats 3 steps later: only memory makes it predictable."""
    held = _repeats(40, seed=1)
    with_memory, without = _train_copy_model(2, tmp_path), _train_copy_model(0, tmp_path)
    ppl = lambda model, mem: perplexity(model, held, segment_len=2, mem_len=mem).ppl
    assert ppl(without, 0) > 12  # 16 equally likely symbols: no better than chance without memory
    assert ppl(with_memory, 2) < 0.6 * ppl(without, 0)
    assert ppl(with_memory, 2) < 0.6 * ppl(with_memory, 0)  # the same weights, the memory taken away


def _run(out: Path, text: Path, *extra: str) -> int:
    return main(["pretrain", "--text", str(text), "--out", str(out), *TINY, *extra])


def test_a_time_or_step_budget_stops_and_leaves_a_loadable_directory(tmp_path, text):
    table = tmp_path / "docs.csv"
    pd.DataFrame({"id": range(300), "body": sentences(300, seed=3)}).to_csv(table, index=False)
    assert main(["pretrain", "--text", str(table), "--text-column", "body", "--out", str(tmp_path / "steps"),
                 "--max-steps", "3", *TINY]) == 0
    assert json.loads((tmp_path / "steps" / "metrics.json").read_text())["steps"] == 3
    assert _run(tmp_path / "timed", text, "--max-minutes", "0.0002") == 0
    metrics = json.loads((tmp_path / "timed" / "metrics.json").read_text())
    assert metrics["stopped"].startswith("time budget") and metrics["steps"] < 100
    lm = load_lm_dir(tmp_path / "timed")
    assert isinstance(lm.model, TXLLMHeadModel) and math.isfinite(metrics["held_out_ppl"])


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, text, monkeypatch):
    """Dropout on, a checkpoint after every step, killed in step 7: resuming must reproduce the uninterrupted
    run bit for bit, which needs the optimizer, the RNG, the stream position and the memory restored."""
    flags = ["--max-steps", "10", "--save-every", "0", "--dropout", "0.1"]
    assert _run(tmp_path / "whole", text, *flags) == 0
    real_step, calls = LMTrainer.step, []

    def dies_in_step_7(self, elapsed):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_step(self, elapsed)

    monkeypatch.setattr(lm_trainer.LMTrainer, "step", dies_in_step_7)
    assert _run(tmp_path / "killed", text, *flags) == 130
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not (tmp_path / "killed" / "config.json").exists()
    monkeypatch.setattr(lm_trainer.LMTrainer, "step", real_step)
    assert _run(tmp_path / "killed", text, *flags, "--resume") == 0
    whole, resumed = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "killed"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["steps"] == 10


def test_ctrl_c_stops_with_a_checkpoint_and_resume_loses_nothing(tmp_path, text, monkeypatch, capsys):
    """SIGINT in step 7 of 10 with the default `--save-every` (no checkpoint yet): step 7 finishes, a
    checkpoint is written there, exit 130 with how to continue; the resumed run equals the uninterrupted one."""
    import signal
    flags = ["--max-steps", "10", "--dropout", "0.1"]
    assert _run(tmp_path / "whole", text, *flags) == 0
    real_step, calls = LMTrainer.step, []

    def signalled_in_step_7(self, elapsed):
        calls.append(1)
        if len(calls) == 7:
            signal.raise_signal(signal.SIGINT)  # handled before it returns (os.kill: whenever Python looks)
        return real_step(self, elapsed)

    monkeypatch.setattr(lm_trainer.LMTrainer, "step", signalled_in_step_7)
    capsys.readouterr()
    assert _run(tmp_path / "stopped", text, *flags) == 130
    err = capsys.readouterr().err
    assert "txl pretrain: interrupted: stopped after step 7 of 10" in err and "--resume" in err
    assert json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text())["step"] == 7
    monkeypatch.setattr(lm_trainer.LMTrainer, "step", real_step)
    assert _run(tmp_path / "stopped", text, *flags, "--resume") == 0
    whole, resumed = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "stopped"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_directory_feeds_a_classifier(lm_dir):
    """The contract with `txl train --init`: load_pretrained gives the TXLLMHeadModel, the encoder's weights
    are `transformer.*`, and they load into a classifier's encoder, which then reads text identically."""
    lm = load_pretrained(lm_dir)
    assert isinstance(lm, TXLLMHeadModel)
    assert json.loads((lm_dir / "config.json").read_text())["architectures"] == ["TXLLMHeadModel"]
    with safe_open(str(lm_dir / "model.safetensors"), "pt") as f:
        encoder_keys = {k for k in f.keys() if not k.startswith("crit.")}
    assert encoder_keys and all(k.startswith("transformer.") for k in encoder_keys)
    config = TXLConfig.from_dict(lm.config.to_dict() | {"num_labels": 3, "labels": ["a", "b", "c"]})
    classifier = TXLDocumentClassifier(config).eval()
    classifier.transformer.load_state_dict(lm.transformer.state_dict(), strict=True)
    ids = torch.randint(3, 200, (2, 11))
    assert torch.equal(classifier.transformer(ids).last_hidden_state, lm.transformer(ids).last_hidden_state)


def test_eval_only_measures_perplexity_with_the_memory_asked_for(lm_dir, text, capsys):
    assert main(["pretrain", "--eval-only", "--init", str(lm_dir), "--text", str(text), "--eval-mem-len", "0"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["pretrain", "--eval-only", "--init", str(lm_dir), "--text", str(text), "--eval-mem-len", "32"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["mem_len"], second["mem_len"]) == (0, 32)
    assert first["tokens"] == second["tokens"] and first["ppl"] != second["ppl"]
    assert 1 < second["ppl"] < 300 and second["word_ppl"] >= second["ppl"] * 0.5


def test_continuing_from_init_keeps_its_shape_and_tokenizer(lm_dir, text, tmp_path):
    assert main(["pretrain", "--init", str(lm_dir), "--text", str(text), "--out", str(tmp_path / "more"),
                 "--max-steps", "2", "--batch-size", "4"]) == 0
    assert (tmp_path / "more" / "tokenizer.json").read_text() == (lm_dir / "tokenizer.json").read_text()
    assert load_pretrained(tmp_path / "more").config.d_model == 32


@pytest.mark.parametrize("case", ["missing", "blank", "short", "no-init", "exists", "init-shape"])
def test_bad_input_is_one_line_with_exit_code_2(case, tmp_path, text, lm_dir, capsys):
    blank, short = tmp_path / "blank.txt", tmp_path / "short.txt"
    blank.write_text("\n   \n\n")
    short.write_text("a few words\n")
    argv = {"missing": ["--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")],
            "blank": ["--text", str(blank), "--out", str(tmp_path / "o")],
            "short": ["--text", str(short), "--out", str(tmp_path / "o"), *TINY],
            "no-init": ["--eval-only", "--text", str(text)],
            "exists": ["--text", str(text), "--out", str(lm_dir)],
            "init-shape": ["--init", str(lm_dir), "--text", str(text), "--out", str(tmp_path / "o"), "--d-model", "64"]}[case]
    assert main(["pretrain", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("txl pretrain: error:"), err


def test_text_that_is_no_language_is_warned_about_and_measured_finite(tmp_path, capsys):
    """Base64 lines: one warning line before training, and a per-word perplexity that stays a number (a word of
    hundreds of tokens overflowed exp() at the end of the run: an internal error after all the work)."""
    import base64
    rng = random.Random(0)
    text = tmp_path / "blobs.txt"
    text.write_text("\n".join(base64.b64encode(rng.randbytes(600)).decode() for _ in range(60)) + "\n")
    assert _run(tmp_path / "lm", text, "--max-steps", "3") == 0
    err = capsys.readouterr().err
    assert err.count("does not look like language: it has almost no spaces") == 1
    metrics = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert math.isfinite(metrics["held_out_word_ppl"]) and metrics["held_out_word_ppl"] > 1e6

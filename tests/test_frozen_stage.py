"""The stage without back-propagation: pooled vectors read with the frozen encoder, cached, and a head fit on
them that is exactly the classifier's head."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from pipelines.cli import main
from pipelines.data.labels import LabelSet
from pipelines.model.inference import pooled_features, predict, prepare
from pipelines.model.metrics import compute_metrics
from pipelines.model.model_dir import load_model_dir
from pipelines.training import frozen_stage
from pipelines.training import budget
from tests.synth import make_corpus
from tests.test_init_from import bert_dir
from tests.tiny_model import make_model_dir


def _model(tmp_path, labels=("politics", "sport", "tech")):
    return make_model_dir(tmp_path / "tiny", labels=list(labels))


def test_the_fitted_head_is_the_classifiers_head(tmp_path):
    """Validation metrics computed from the pooled vectors equal those of the model that predicts with the head
    written into it (float32 both ways)."""
    frame = make_corpus(90, seed=4)
    md = prepare(load_model_dir(_model(tmp_path)), precision="float32")
    ids = [e.ids for e in md.tokenizer.encode_batch(list(frame.text), add_special_tokens=False)]
    labels = LabelSet(md.labels, False)
    y = torch.as_tensor(labels.encode(list(frame.label)))
    x = pooled_features(md, ids)
    vtexts, vlabels = list(frame.text[60:]), list(frame.label[60:])
    c, metrics, probs = frozen_stage.fit_head(md, x[:60], y[:60], x[60:], vlabels)
    assert c in frozen_stage.C_GRID
    predictions = predict(md, vtexts)
    assert compute_metrics(vlabels, [p.label for p in predictions], md.labels, multi_label=False) == metrics
    np.testing.assert_allclose(probs, [[p.probs[n] for n in md.labels] for p in predictions], atol=1e-5)


def test_pooled_vectors_do_not_depend_on_the_batch(tmp_path):
    md = prepare(load_model_dir(_model(tmp_path)), precision="float32")
    ids = [e.ids for e in md.tokenizer.encode_batch(list(make_corpus(12, seed=5, long_every=3).text),
                                                    add_special_tokens=False)]
    together = pooled_features(md, ids)
    alone = np.concatenate([pooled_features(md, [x]) for x in ids])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_the_cache_is_read_back_and_a_deadline_reads_a_random_sample(tmp_path, monkeypatch):
    md = load_model_dir(_model(tmp_path))
    ids = [e.ids for e in md.tokenizer.encode_batch(list(make_corpus(150, seed=6).text), add_special_tokens=False)]
    reader = frozen_stage.FeatureReader(md, precision="float32", device="cpu")
    order = np.random.default_rng(0).permutation(len(ids)).tolist()
    first = frozen_stage.read_cached(reader, ids, order, tmp_path / "cache", deadline=float("inf"))
    assert sorted(first) == list(range(150)) and reader.tokens == sum(map(len, ids))
    again = frozen_stage.FeatureReader(md, precision="float32", device="cpu")
    second = frozen_stage.read_cached(again, ids, order, tmp_path / "cache", deadline=float("inf"))
    assert again.tokens == 0 and all(np.array_equal(first[i], second[i]) for i in first)  # nothing read twice
    late = frozen_stage.FeatureReader(md, precision="float32", device="cpu")
    part = frozen_stage.read_cached(late, ids, order, tmp_path / "other", deadline=time.monotonic() - 1)
    assert part == {} and late.tokens == 0
    monkeypatch.setattr(frozen_stage, "CHUNK_TOKENS", 40)
    least = frozen_stage.read_cached(late, ids, order, tmp_path / "least", deadline=time.monotonic() - 1, minimum=20)
    assert 20 <= len(least) < 150 and set(least) == set(order[:len(least)])  # the first of the random order
    assert frozen_stage.planned([len(x) for x in ids], order, seconds=None, tokens_per_second=1) == 150
    n = frozen_stage.planned([len(x) for x in ids], order, seconds=1.0, tokens_per_second=sum(map(len, ids)) / 3)
    assert 0 < n < 150


def test_a_key_changes_with_the_weights_and_the_documents(tmp_path):
    md = load_model_dir(_model(tmp_path))
    ids = [[5, 6, 7], [8, 9]]
    key = frozen_stage.cache_key(md, ids)
    assert frozen_stage.cache_key(md, [[5, 6, 7], [8, 10]]) != key
    with torch.no_grad():
        next(md.model.transformer.parameters()).add_(1e-3)
    assert frozen_stage.cache_key(md, ids) != key


def test_multi_label_heads_are_fit_per_label(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 16)).astype(np.float32)  # d_model 16
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, np.zeros(80, bool)], 1)  # the third label never occurs
    md = load_model_dir(_model(tmp_path, labels=("a", "b", "c")))
    md.model.config.multi_label = True
    names = ["|".join(n for n, on in zip("abc", row) if on) or "a" for row in y]
    c, metrics, _ = frozen_stage.fit_head(md, x[:60], torch.as_tensor(y[:60].astype(np.float32)), x[60:], names[60:])
    assert metrics["micro_f1"] > 0.8 and md.model.config.thresholds is not None
    assert float(md.model.head.bias[2].detach()) < -5  # a label never seen is never predicted


def test_the_budget_reads_everything_when_half_of_it_is_enough_and_fine_tunes_in_the_rest():
    b = budget.Budget(1800.0, ngrams=100.0)
    plan = budget.split(b, spent=60, read_all=300, step=5)
    assert plan.steps == int((1800 - 100 - 60 - 300 - 60) / 5)  # one validation kept
    assert plan.reading == 60 + (1800 - 100 - 60) / 2  # a slower reading than measured still reads them all


def test_a_long_reading_takes_half_when_fine_tuning_can_use_the_other_half():
    b = budget.Budget(1800.0, ngrams=100.0)
    left = 1800 - 100 - 60
    plan = budget.split(b, spent=60, read_all=10_000, step=5)
    assert plan.reading == pytest.approx(60 + left / 2) and plan.steps >= budget.MIN_STEPS


def test_reading_takes_everything_when_fine_tuning_would_take_too_few_steps():
    """Long documents on a slow machine: a few steps cannot beat reading more documents."""
    b = budget.Budget(1800.0, ngrams=100.0)
    plan = budget.split(b, spent=60, read_all=10_000, step=60)
    assert plan.reading == pytest.approx(1800 - 100) and plan.steps == 0
    short = budget.split(b, spent=60, read_all=300, step=60)  # all read in half, yet too few steps after
    assert short.reading == pytest.approx(1800 - 100) and short.steps == 0
    assert budget.split(budget.Budget(None), spent=60, read_all=10_000, step=60).reading is None
    assert budget.split(budget.Budget(60.0, ngrams=100.0), spent=10, read_all=5, step=1).steps == 0  # no time left


def test_a_step_costs_its_window_and_half_the_rest():
    one = budget.step_seconds([512] * 4, batch_size=2, window_tokens=0, tokens_per_second=1000)
    assert one == pytest.approx(2 * 512 * budget.FINE_TUNE_COST / 1000)
    long_exact = budget.step_seconds([10_000], batch_size=2, window_tokens=0, tokens_per_second=1000)
    long_window = budget.step_seconds([10_000], batch_size=2, window_tokens=2048, tokens_per_second=1000)
    assert long_window == pytest.approx(2 * (2048 * budget.FINE_TUNE_COST + (10_000 - 2048) / 2) / 1000)
    assert long_window < long_exact / 3


def _train(tmp_path, out: str, *extra: str) -> int:
    return main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / out), "--init",
                 str(bert_dir(tmp_path) if not (tmp_path / "bert").exists() else tmp_path / "bert"),
                 "--segment-len", "9", "--mem-len", "9", "--epochs", "1", "--batch-size", "6", "--ngrams", "off",
                 *extra])


def test_train_reads_first_plans_aloud_and_records_which_stage_it_kept(tmp_path, capsys):
    make_corpus(60, seed=3).to_csv(tmp_path / "train.csv", index=False)
    assert _train(tmp_path, "model") == 0
    err = capsys.readouterr().err
    assert "txl train: plan (" in err and "read all 54 training documents whole" in err
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    frozen = metrics["training"]["frozen"]
    assert frozen["read"] == frozen["total"] == 54 and frozen["tokens"] > 0
    assert metrics["training"]["kept"] in ("frozen encoder + fitted head", "fine-tuning")
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Kept:" in card and "plan (" in card and "read all 54 training documents whole" in card


def test_a_tiny_budget_reads_a_random_sample_whole(tmp_path, monkeypatch, capsys):
    """The reading stage stops at its share of the budget and fits the head on the documents read."""
    make_corpus(200, seed=3).to_csv(tmp_path / "train.csv", index=False)
    monkeypatch.setattr(frozen_stage, "CHUNK_TOKENS", 40)
    clock = {"t": 0.0}

    def fake_monotonic():  # each call moves a tenth of a second: the budget ends after a few chunks
        clock["t"] += 0.1
        return clock["t"]
    monkeypatch.setattr(frozen_stage.time, "monotonic", fake_monotonic)
    assert _train(tmp_path, "model", "--max-minutes", "0.1", "--frozen", "auto") == 0
    frozen = json.loads((tmp_path / "model" / "metrics.json").read_text())["training"]["frozen"]
    assert 0 < frozen["read"] < frozen["total"]


def test_a_budget_too_short_to_read_all_validation_documents_uses_a_random_sample_throughout(tmp_path, monkeypatch,
                                                                                               capsys):
    """The validation documents read (at least MIN_VALID) are the validation split of the head, of fine-tuning and
    of the fusion, and the plan line says so."""
    import pipelines.commands.train as train_command
    make_corpus(300, seed=3).to_csv(tmp_path / "train.csv", index=False)
    monkeypatch.setattr(frozen_stage, "CHUNK_TOKENS", 40)
    monkeypatch.setattr(train_command, "VALID_SHARE", 0.0)  # no time for validation beyond the minimum
    monkeypatch.setattr(train_command, "MIN_VALID", 12)
    assert _train(tmp_path, "model", "--ngrams", "words", "--max-minutes", "5") == 0
    err = capsys.readouterr().err
    assert "(validation: a random " in err and " of its 30 documents)" in err
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    n = metrics["validation"]["n_documents"]
    assert 12 <= n < 30 and metrics["validation_ngram"]["n_documents"] == n


def test_frozen_off_fine_tunes_at_once(tmp_path, capsys):
    make_corpus(30, seed=3).to_csv(tmp_path / "train.csv", index=False)
    assert _train(tmp_path, "model", "--frozen", "off") == 0
    assert "plan (" not in capsys.readouterr().err
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["training"]["frozen"] is None


def test_an_overconfident_head_is_cooled_on_validation_without_changing_a_decision():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(400, 3))
    labels = [["a", "b", "c"][int(rng.choice(3, p=np.exp(z) / np.exp(z).sum()))] for z in true]
    t = frozen_stage._temperature(8 * true, labels, ["a", "b", "c"])
    assert 0.08 < t < 0.2  # about 1/8: the logits' own scale recovered
    assert (np.argmax(t * 8 * true, 1) == np.argmax(true, 1)).all()


def test_a_run_killed_while_fine_tuning_resumes_without_reading_again(tmp_path, monkeypatch, capsys):
    """The frozen stage's result and head are in the checkpoint: `--resume` goes straight on fine-tuning."""
    from conftest import die_in_step

    import pipelines.training.trainer as trainer_module
    make_corpus(60, seed=3).to_csv(tmp_path / "train.csv", index=False)
    real_step = die_in_step(monkeypatch, trainer_module.Trainer, 3)
    assert _train(tmp_path, "model", "--save-every", "0") == 130
    assert "plan (" in capsys.readouterr().err
    monkeypatch.setattr(trainer_module.Trainer, "step", real_step)
    reads = []
    import pipelines.commands.train as train_command
    monkeypatch.setattr(train_command, "run_frozen_stage", lambda *a, **k: reads.append(1))
    assert _train(tmp_path, "model", "--save-every", "0", "--resume") == 0
    assert reads == [] and "plan (" not in capsys.readouterr().err
    frozen = json.loads((tmp_path / "model" / "metrics.json").read_text())["training"]["frozen"]
    assert frozen["read"] == frozen["total"] == 54


def test_the_plan_line_says_what_is_read_and_whether_fine_tuning_follows():
    b = budget.Budget(1800.0, ngrams=120.0)
    quick = budget.plan_line(precision="bf16", device="cpu", tokens_per_second=20_000, planned=100, n_train=100,
                             planned_tokens=1_200_000, budget=b, plan=budget.Split(120.0, 300), spent=60)
    assert "read all 100 training documents whole" in quick and "(~2.0 min)" in quick
    assert "n-grams fit first in 2.0 min" in quick and "fine-tune for ~26.0 min (~300 steps)" in quick
    slow = budget.plan_line(precision="float32", device="cpu", tokens_per_second=2_000, planned=40, n_train=100,
                            planned_tokens=10**9, budget=b, plan=budget.Split(1680.0, 0), spent=60)
    assert "a random 40 of the 100" in slow and "(~28.0 min)" in slow and "no fine-tuning" in slow


def test_the_ngrams_are_fit_first_and_fused_without_reading_validation_again(tmp_path, monkeypatch, capsys):
    """The n-gram stage runs before reading (its time is measured, then the budget split); the fusion at the end
    takes the kept model's validation probabilities from training; a resume reuses the n-grams fit."""
    import pipelines.commands.train as train_command
    make_corpus(60, seed=3).to_csv(tmp_path / "train.csv", index=False)
    monkeypatch.setattr(train_command, "encoder_scores", lambda *a: pytest.fail("validation read again"))
    assert _train(tmp_path, "model", "--ngrams", "words", "--max-minutes", "5") == 0
    err = capsys.readouterr().err
    assert err.index("n-grams fit in") < err.index("txl train: plan (") and "n-grams fit first in" in err
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["fusion"]["fit_on"] == "training and validation splits"
    assert metrics["training"]["minutes"] < 5
    monkeypatch.setattr(train_command, "fit_parts", lambda *a, **k: pytest.fail("n-grams fit again"))
    assert _train(tmp_path, "model", "--ngrams", "words", "--max-minutes", "5", "--resume") == 0

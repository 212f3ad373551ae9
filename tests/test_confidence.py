"""The low-confidence notice (pipelines/model/confidence.py): thresholds measured on validation, what they flag,
and the share of known words it reads."""
from __future__ import annotations

import numpy as np

from pipelines.model.confidence import QUANTILE, Calibration, calibrate
from pipelines.model.ngrams import CHUNK_CHARS, fit_ngram
from tests.synth import make_corpus


def _validation(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.where(rng.random(n) < 0.8, probs.argmax(1), rng.integers(0, 3, n))
    return probs, truth


def test_each_signal_flags_about_its_quantile_of_validation():
    probs, truth = _validation()
    cal = calibrate(probs, truth)
    top = probs.max(1)
    assert abs((top < cal.min_probability).mean() - QUANTILE) < 0.01
    assert cal.min_coverage is None and cal.disagreement_rate is None  # no n-grams: probability alone
    assert cal.flagged == (top < cal.min_probability).mean()
    # the flagged are the least sure: they are right less often than the rest
    assert cal.accuracy_flagged < cal.accuracy_rest
    coverage = np.random.default_rng(1).uniform(0.6, 1.0, len(top))
    with_words = calibrate(probs, truth, coverage, np.ones(len(top), bool))
    assert abs((coverage < with_words.min_coverage).mean() - QUANTILE) < 0.01
    assert with_words.disagreement_rate == 0.0 and with_words.parts_signal
    assert QUANTILE < with_words.flagged <= 2 * QUANTILE + 0.01


def test_notice_says_why_and_disagreement_counts_only_where_it_is_rare():
    cal = Calibration(0.6, 0.7, 0.05, 100, 0.1, 0.5, 0.95)
    assert cal.notice(0.9, 0.9, True) == ""
    assert "top probability 50%" in cal.notice(0.5, 0.9, True)
    assert "20% of its words" in cal.notice(0.9, 0.2, True)
    assert "disagree" in cal.notice(0.9, 0.9, False)
    assert cal.notice(0.9, float("nan"), None) == ""  # no words, no n-grams: nothing to say from them
    common = Calibration(0.6, 0.7, 0.3, 100, 0.1, 0.5, 0.95)
    assert common.notice(0.9, 0.9, False) == ""  # the parts disagree on 30% of validation: no signal
    assert "10% of 100 validation documents got it; 50% of those were classified right, against 95%" \
        in cal.summary()


def test_calibration_round_trips_and_a_damaged_file_costs_only_the_notice(tmp_path):
    probs, truth = _validation(50)
    cal = calibrate(probs, truth, np.full(50, 0.9), np.ones(50, bool))
    (tmp_path / "confidence.json").write_text(cal.files()["confidence.json"])
    assert Calibration.load(tmp_path) == cal
    (tmp_path / "confidence.json").write_text("{not json")
    assert Calibration.load(tmp_path) is None


def test_coverage_is_the_share_of_known_words_and_streams_long_texts():
    frame = make_corpus(90, seed=3)
    ngram = fit_ngram(frame["text"].tolist(), np.asarray(frame["label"].astype("category").cat.codes),
                      multi_label=False, n_labels=3, chars=False)
    known = "goal match team"
    out = ngram.coverage([known, f"{known} zzqx vvkw ploo", "le gouvernement français", "", "1 2 3", known * 0 + "Goal"])
    assert out[0] == 1.0 and out[1] == 0.5 and out[2] == 0.0 and out[5] == 1.0  # lowercased, as the n-grams read
    assert np.isnan(out[3]) and np.isnan(out[4])  # no word of two characters or more
    long = " ".join(["goal zzqx"] * (3 * CHUNK_CHARS // 10))
    assert ngram.coverage([long])[0] == 0.5

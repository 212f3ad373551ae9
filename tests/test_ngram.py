"""The n-gram component (pipelines/model/ngrams.py): it scores as scikit-learn's TF-IDF + LinearSVC does, survives a
save/load without pickle, its fusion weights follow whichever part carries the signal (and a prior keeps
both parts where a validation split cannot tell them apart), and a model directory
trained with it predicts, explains and reports each part."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from pipelines.errors import UserError
from pipelines.model import fusion as fusion_module
from pipelines.model import ngrams as ngram_module
from pipelines.model.fusion import fit_fusion, fused_logits
from pipelines.model.ngrams import NgramModel, fit_ngram, fit_sample
from tests.synth import make_corpus


@pytest.fixture(scope="module")
def corpus():
    frame = make_corpus(120, seed=3)
    names = sorted(set(frame.label))
    return list(frame.text), np.array([names.index(y) for y in frame.label]), names


def _save(model: NgramModel, directory):
    for name, content in model.files().items():
        (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("chars", [False, True])
def test_scores_equal_sklearn(corpus, chars):
    """Words: `txl baseline`'s features; with chars, sklearn's char_wb 2-5-grams stacked after them."""
    import scipy.sparse as sp

    texts, y, names = corpus
    model = fit_ngram(texts[:90], y[:90], multi_label=False, n_labels=len(names), chars=chars)
    vecs = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)]
    if chars:
        vecs.append(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2,
                                    max_features=ngram_module.MAX_CHAR_TERMS))
    train = sp.hstack([v.fit_transform(texts[:90]) for v in vecs], format="csr")
    ref = LinearSVC(C=1.0, random_state=0).fit(train, y[:90])
    x = sp.hstack([v.transform(texts[90:]) for v in vecs], format="csr")
    assert model.n_word_terms == len(vecs[0].vocabulary_) and len(model.terms) == x.shape[1]
    np.testing.assert_allclose(ref.decision_function(x), model.scores(texts[90:]), atol=2e-3)
    # exactly sklearn's scores with the weights rounded to float16, as the file stores them
    expected = x @ ref.coef_.astype(np.float16).astype(np.float32).T + ref.intercept_
    assert model.scores(texts[90:]).shape == (30, 3)
    np.testing.assert_allclose(model.scores(texts[90:]), expected, atol=1e-5)


@pytest.mark.parametrize("chars", [False, True])
def test_round_trip_is_plain_data(corpus, tmp_path, chars):
    """A words-only model writes the format of the models before character n-grams, so those load as ever."""
    texts, y, names = corpus
    model = fit_ngram(texts, y, multi_label=False, n_labels=3, chars=chars)
    model.fusion = {"a": 0.7, "b": 2.5, "c": 0.0}
    _save(model, tmp_path)
    meta = json.loads((tmp_path / "ngram.json").read_text())
    assert meta["format"] == "txl-ngram" and meta["terms"] == model.terms
    assert ("n_words" in meta) == chars and (model.n_word_terms < len(model.terms)) == chars
    back = NgramModel.load(tmp_path)
    assert back.fusion == model.fusion and back.fit_documents == model.fit_documents == len(texts)
    assert back.n_word_terms == model.n_word_terms
    # the weights travel as float16, and the fitted model already holds them so rounded: identical scores
    np.testing.assert_array_equal(back.scores(texts[:20]), model.scores(texts[:20]))
    assert NgramModel.load(tmp_path / "elsewhere") is None


def test_damaged_files_are_one_line_errors(corpus, tmp_path):
    texts, y, _ = corpus
    _save(fit_ngram(texts, y, multi_label=False, n_labels=3), tmp_path)
    (tmp_path / "ngram.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="damaged"):
        NgramModel.load(tmp_path)
    _save(fit_ngram(texts, y, multi_label=False, n_labels=3), tmp_path)
    meta = json.loads((tmp_path / "ngram.json").read_text())
    meta["terms"] = meta["terms"][:-3]
    (tmp_path / "ngram.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not fit together"):
        NgramModel.load(tmp_path)


def test_binary_scores_are_two_opposite_columns(corpus):
    texts, y, _ = corpus
    binary = (y == 0).astype(int)
    model = fit_ngram(texts, binary, multi_label=False, n_labels=2)
    s = model.scores(texts)
    assert s.shape == (len(texts), 2)
    np.testing.assert_allclose(s[:, 0], -s[:, 1])
    assert (s.argmax(1) == binary).mean() > 0.95


def test_missing_class_scores_lowest(corpus):
    texts, y, _ = corpus
    keep = y != 2  # the training split lacks class 2
    model = fit_ngram([t for t, k in zip(texts, keep) if k], y[keep], multi_label=False, n_labels=3)
    assert (model.scores(texts).argmax(1) != 2).all()


@pytest.mark.parametrize("informative", ["encoder", "ngram"])
def test_fusion_weights_follow_the_signal(informative):
    """Of two parts, one predicting the labels and one noise, the fit weights the informative one."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    signal = 3.0 * torch.nn.functional.one_hot(y, 4).float() + torch.randn(400, 4, generator=g)
    noise = torch.randn(400, 4, generator=g)
    encoder, scores = (signal, noise) if informative == "encoder" else (noise, signal)
    w = fit_fusion(encoder, scores.numpy(), y, multi_label=False)
    strong, weak = (w["a"], w["b"]) if informative == "encoder" else (w["b"], w["a"])
    assert strong > 0.5 and weak < 0.2 * strong, w
    fused = fused_logits(encoder, scores, a=w["a"], b=w["b"], multi_label=False)
    assert (fused.argmax(1) == y).float().mean() > 0.9


def test_fusion_of_two_half_informative_parts_beats_each():
    """Each part sees half of the classes' evidence: the fused logits are right more often than either."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (2000,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    encoder = 1.2 * onehot + torch.randn(2000, 3, generator=g)
    scores = 1.2 * onehot + torch.randn(2000, 3, generator=g)
    w = fit_fusion(encoder, scores.numpy(), y, multi_label=False)
    acc = lambda z: float((z.argmax(1) == y).float().mean())  # noqa: E731
    fused = fused_logits(encoder, scores, a=w["a"], b=w["b"], multi_label=False)
    assert acc(fused) > max(acc(encoder), acc(scores)) + 0.03


def nearly_solved_split(seed: int, n: int = 178) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small validation split both parts get right but for one document, where both prefer the same wrong
    class: an encoder with steady, large margins (as a fine-tuned one), n-gram scores with small, varied ones."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 5).float()
    encoder = 5.3 * onehot + 0.3 * torch.randn(n, 5, generator=g)
    scores = (0.9 + 0.5 * torch.rand(n, 1, generator=g)) * onehot + 0.25 * torch.randn(n, 5, generator=g) - 0.5
    wrong = int((y[0] + 1) % 5)
    encoder[0, wrong], scores[0, wrong] = encoder[0, y[0]] + 1.2, scores[0, y[0]] + 0.35
    return encoder, scores, y


@pytest.mark.parametrize("seed", [0, 1])
def test_fusion_prior_keeps_both_parts_on_a_nearly_solved_split(seed):
    """With one error on the split, shared by both parts, a plain log-loss fit drops the n-grams (it leans on
    the part that is more confident when right); under the prior each part keeps its own calibrated weight."""
    encoder, scores, y = nearly_solved_split(seed)
    w = fit_fusion(encoder, scores.numpy(), y, multi_label=False)
    assert abs(math.log(w["b"] / w["a"]) - math.log(w["prior_ratio"])) < fusion_module.PRIOR_SD, w
    assert w["b"] > w["a"] > 0.1, w  # both parts in: the n-grams' scores are on a smaller scale
    plain = fit_fusion(encoder, scores.numpy(), y, multi_label=False, prior_sd=1e6)  # the failure it is there for
    assert plain["b"] < 0.01 * plain["a"], plain


def test_fusion_prior_yields_to_evidence():
    """On a split with hundreds of errors the data decide the weights: the prior moves them by little."""
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (2000,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    encoder = 2.0 * onehot + torch.randn(2000, 3, generator=g)
    scores = 0.6 * onehot + 0.4 * torch.randn(2000, 3, generator=g)
    w = fit_fusion(encoder, scores.numpy(), y, multi_label=False)
    plain = fit_fusion(encoder, scores.numpy(), y, multi_label=False, prior_sd=1e6)
    assert abs(math.log(w["b"] / w["a"]) - math.log(plain["b"] / plain["a"])) < 0.05, (w, plain)


def test_multi_label_fusion_and_per_label_scores():
    frame = make_corpus(120, seed=4, multi_label=True)
    names = sorted({x for y in frame.label for x in y.split("|")})
    truth = np.array([[float(n in y.split("|")) for n in names] for y in frame.label])
    model = fit_ngram(list(frame.text), truth, multi_label=True, n_labels=len(names))
    s = model.scores(list(frame.text))
    assert s.shape == truth.shape
    assert ((s > 0) == truth.astype(bool)).mean() > 0.9
    w = fit_fusion(torch.zeros(len(s), len(names)), s, torch.as_tensor(truth), multi_label=True)
    assert w["b"] > 0.5  # the encoder here says nothing: the n-grams carry the decision


def test_term_contributions_add_up_to_the_score(corpus):
    texts, y, _ = corpus
    model = fit_ngram(texts, y, multi_label=False, n_labels=3, chars=False)
    model.fusion = {"a": 1.0, "b": 2.0, "c": 0.0}
    text = texts[5]
    label = int(model.scores([text])[0].argmax())
    terms = model.term_contributions(text, label, top=10_000)
    assert terms and all(v > 0 for _, v in terms)
    assert [v for _, v in terms] == sorted((v for _, v in terms), reverse=True)
    # every positive term's part, plus the negative ones left out, is b * (score - intercept)
    x = model.vectorizer.transform([text])
    parts = x.data * model.coef[label, x.indices] * 2.0
    assert sum(v for _, v in terms) == pytest.approx(float(parts[parts > 0].sum()), rel=1e-5)
    assert float(parts.sum()) == pytest.approx(2.0 * float(model.scores([text])[0, label] - model.intercept[label]),
                                               rel=1e-4, abs=1e-4)


def test_character_parts_go_to_the_words_that_hold_them(corpus):
    """With character n-grams every part is a word n-gram or a word of the text (punctuation at its ends cut),
    and all the parts still add up to b x (score - intercept)."""
    import re

    texts, y, _ = corpus
    model = fit_ngram(texts, y, multi_label=False, n_labels=3)
    model.fusion = {"a": 1.0, "b": 2.0, "c": 0.0}
    text = texts[7] + " Zebra-crossing, ZEBRA!"
    label = int(model.scores([text])[0].argmax())
    parts = model.contributions(text, label)
    total = 2.0 * float(model.scores([text])[0, label] - model.intercept[label])
    assert sum(parts.values()) == pytest.approx(total, rel=1e-4, abs=1e-4)
    words = {w.strip(".,!?;:'\"()") for w in text.lower().split()}
    word_terms = set(model.terms[:model.n_word_terms])
    assert all(t in word_terms or t in words for t in parts), [t for t in parts if t not in words | word_terms]
    assert "zebra-crossing" in parts and "zebra" in parts  # only character n-grams know them
    top = model.term_contributions(text, label, top=5)
    assert 0 < len(top) <= 5 and all(v > 0 for _, v in top)
    assert not any(re.fullmatch(r" ?\w{1,4} ?", t) and t not in words | word_terms for t, _ in top)


def test_texts_without_words_give_no_component():
    assert fit_ngram(["1 2 3", "4 5", "6"] * 4, np.array([0, 1, 0] * 4), multi_label=False, n_labels=2) is None


def test_fit_sample_bounds_the_text_read():
    lengths, y = [100] * 50, np.arange(50) % 2
    assert fit_sample(lengths, y, limit=5000) is None  # all of it fits: every document
    keep = fit_sample(lengths, y, limit=1234, seed=1)
    assert len(keep) == 12 and (np.diff(keep) > 0).all() and keep.max() < 50  # sorted, distinct, in range
    assert not np.array_equal(keep, np.arange(12))  # a random sample, not the file's first rows
    np.testing.assert_array_equal(keep, fit_sample(lengths, y, limit=1234, seed=1))  # seeded
    assert len(fit_sample([10_000, 5], np.array([0, 1]), limit=100)) == 1  # one over-long document still gives a fit


def test_fit_sample_keeps_rare_labels():
    y = np.zeros(1000, int)
    y[[17, 640, 901]] = 1  # a class of 3 documents in 1,000
    multi = np.stack([y == 0, y == 1, np.arange(1000) == 333], 1).astype(int)  # and a label on 1 document
    for targets in (y, multi):
        keep = fit_sample([100] * 1000, targets, limit=5000, per_label=2)  # 50 documents of the 1,000
        assert len(keep) == 50
        hot = targets[keep] if targets.ndim == 2 else np.eye(2, dtype=int)[targets[keep]]
        assert hot.sum(0).min() >= 1  # every label is in the sample
        assert len(set(keep) & {17, 640, 901}) >= 2  # at least per_label of the rare class
    # without the guarantee, this seeded 5% misses both rare labels: the guarantee is what kept them
    plain = fit_sample([100] * 1000, multi, limit=5000, per_label=0)
    assert 333 not in plain and not set(plain) & {17, 640, 901}


def test_large_training_text_is_sampled(corpus, monkeypatch):
    texts, y, names = corpus
    full = fit_ngram(texts, y, multi_label=False, n_labels=3)
    monkeypatch.setattr("pipelines.model.ngrams.MAX_FIT_CHARS", sum(map(len, texts)) // 2)
    half = fit_ngram(texts, y, multi_label=False, n_labels=3)
    assert full.fit_documents == len(texts) and 0.3 * len(texts) < half.fit_documents < 0.7 * len(texts)
    assert set(half.terms) < set(full.terms)  # the vocabulary of the sample only
    assert half.coef.shape == (3, len(half.terms))
    # the sampled fit still separates the classes of the whole corpus
    assert (half.scores(texts).argmax(1) == y).mean() > 0.8


def test_the_card_says_what_the_ngrams_read():
    from pipelines.training.fusion_stage import SPLITS, fit_phrase

    # a model fused before the refit (its metrics say nothing of it): the training split
    assert fit_phrase({"fit_documents": 90}, 90, 10) == ("the training split", "weights fit on the validation split")
    read, weights = fit_phrase({"fit_documents": 100, "fit_on": SPLITS[True]}, 90, 10)
    assert read == "the training and validation splits" and weights.endswith("fit on the training split alone)")
    assert fit_phrase({"fit_documents": 40, "fit_on": SPLITS[True]}, 90, 10)[0] == \
        "a random 40 documents of the training and validation splits"
    _, weights = fit_phrase({"fit_documents": 100, "fit_on": SPLITS[True], "prior_ratio": 7.25}, 90, 10)
    assert weights.endswith("under a prior toward each part's own calibration (b / a 7.25)")


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.sampled_from(["alpha", "beta", "Gamma", "déjà-vu", "x", "42", "a.b", "ü", "tax"]),
                      min_size=1, max_size=120),
       spaces=st.lists(st.sampled_from([" ", "  ", "\n", "\t", " \n ", "\u3000"]), min_size=1, max_size=120),
       chunk=st.integers(min_value=1, max_value=60))
def test_long_texts_are_counted_in_pieces_exactly(words, spaces, chunk):
    """Counting a text piece by piece (each piece starting with the previous one's last word, whose counts
    are subtracted) gives the whole text's counts, for the word 1-2-grams and the character n-grams alike."""
    from sklearn.feature_extraction.text import CountVectorizer

    ngrams = ngram_module

    text = "".join(w + spaces[i % len(spaces)] for i, w in enumerate(words))
    corpus = [text, "alpha beta gamma déjà-vu tax 42 x a.b ü"]
    for chars in (False, True):
        vec = TfidfVectorizer(**ngrams._settings(fit=False, chars=chars)).fit(corpus)
        whole = CountVectorizer.transform(vec, [text]).toarray()
        original = ngrams.CHUNK_CHARS
        try:
            ngrams.CHUNK_CHARS = chunk
            pieces = ngrams._counts(vec, text).toarray()
            scored = ngrams._Features._part(vec, [text]).toarray()
        finally:
            ngrams.CHUNK_CHARS = original
        np.testing.assert_allclose(pieces, whole, rtol=0, atol=1e-6)
        np.testing.assert_allclose(scored, vec.transform([text]).toarray(), rtol=1e-5, atol=1e-6)


def test_a_word_longer_than_the_reach_is_counted_in_bounded_pieces():
    """One 'word' of 400,000 characters (encoded data): pieces of at most (REACH + 1) x CHUNK_CHARS, each read
    once (counted whole, one 5 MB word took 2.6 GB); a word within the reach is never cut."""
    run = "ab" * 200_000
    pieces = list(ngram_module._pieces(run, ngram_module._LAST_WORD))
    assert "".join(p for p, _ in pieces) == run and all(shared == "" for _, shared in pieces)
    assert max(len(p) for p, _ in pieces) <= (ngram_module.REACH + 1) * ngram_module.CHUNK_CHARS
    text = "x" * 50_000 + " tail"
    assert [p for p, _ in ngram_module._pieces(text, ngram_module._LAST_WORD)][0] == "x" * 50_000

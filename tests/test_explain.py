"""Occlusion explanations (pipelines/model/explain.py): a long document's segment effects are those of the
document read without each segment's tokens; a short one's sentence effects those of the text without each
sentence, through the fused model; the parts of the fused logit add up; `txl classify --explain K`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.cli import main
from pipelines.data import token_ids
from pipelines.model import explain as ex
from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import load_model_dir
from pipelines.model.ngrams import fit_ngram
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir
from txl_core.occlusion import window


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """The tiny model with its weights shaken (untrained weights say little) and an n-gram part fit on a corpus."""
    path = make_model_dir(tmp_path_factory.mktemp("m") / "tiny")
    md = load_model_dir(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in md.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    corpus = make_corpus(90, seed=2)
    md.ngram = fit_ngram(list(corpus.text), np.array([md.labels.index(y) for y in corpus.label]),
                         multi_label=False, n_labels=3, chars=True)
    md.ngram.fusion = {"a": 0.7, "b": 1.3, "c": 0.0}
    return prepare(md, precision="float32")


def _log_p(md, texts, target):
    return np.log([p.probs[md.labels[target]] for p in predict(md, texts)])


def _fused_log_p(md, text, spans, target, encoder_ids=None, only=None):
    """log p(target) of the text and of each variant without one part (those of `only`, default all), brute
    force for the encoder (each variant read again, or `encoder_ids` when given) and by the n-grams' linear
    shares (`span_contributions` of all the parts)."""
    only = range(len(spans)) if only is None else only
    ids = encoder_ids or [token_ids.encode(md.tokenizer, [t])[0].ids
                          for t in [text] + [text[:spans[k][0]] + text[spans[k][1]:] for k in only]]
    enc = ex._encoder_logits(md, ids)
    whole = md.ngram.scores([text])
    scores = np.concatenate([whole, whole - md.ngram.span_contributions(text, spans)[list(only)]])
    return torch.log_softmax(md.ngram.fuse(enc, scores).double(), dim=-1)[:, target].numpy()


def test_a_long_documents_segments_are_occluded_exactly(fused):
    text = " ".join(make_corpus(60, seed=5).text)  # thousands of tokens: many segments of 16
    out = ex.explain(fused, text)
    tokens = token_ids.encode(fused.tokenizer, [text], offsets=True)[0]
    t = fused.model.config.segment_len
    assert out.parts[0].unit == "segment" and len(out.parts) == -(-len(tokens) // t)
    assert out.parts[0].start == 0 and out.parts[-1].end == len(text)
    assert all(a.end == b.start for a, b in zip(out.parts, out.parts[1:]))  # the spans cover the text
    assert out.reads <= 1 + window(fused.model)
    target = fused.labels.index(out.label)
    for k in (0, 3, len(out.parts) - 1):
        kept = np.concatenate([tokens.ids[:k * t], tokens.ids[(k + 1) * t:]])  # the document without segment k
        spans = [(p.start, p.end) for p in out.parts]
        log_p = _fused_log_p(fused, text, spans, target, encoder_ids=[tokens.ids, kept], only=[k])
        assert out.parts[k].log_prob == pytest.approx(float(log_p[0] - log_p[1]), abs=1e-4)
        odds = log_p - np.log1p(-np.exp(log_p))
        assert out.parts[k].effect == pytest.approx(float(odds[0] - odds[1]), abs=1e-4)


def test_a_short_documents_sentences_are_occluded_through_the_fused_model(fused):
    text = ("The match ended in a late goal. Shares fell on the market. The striker scored twice!\n\n"
            "A new chip was made.")
    out = ex.explain(fused, text)
    assert [p.unit for p in out.parts] == ["sentence"] * 4
    assert "".join(text[p.start:p.end] for p in out.parts) == text
    target = fused.labels.index(out.label)
    log_p = _fused_log_p(fused, text, [(p.start, p.end) for p in out.parts], target)
    np.testing.assert_allclose([p.log_prob for p in out.parts], log_p[0] - log_p[1:], atol=1e-4)
    assert all(np.sign(p.effect) == np.sign(p.log_prob) for p in out.parts)
    for p in out.parts:  # the two terms of the fused logit move it by their sum
        assert np.isfinite(p.encoder) and np.isfinite(p.ngrams) and p.ngrams != 0


@pytest.mark.parametrize("text, parts", [
    ("The striker scored twice, the keeper saved a penalty; the coach was pleased.", 3),  # clauses
    ("the team won the cup after a late goal in extra time", 3),  # runs of four words
])
def test_a_one_sentence_document_is_explained_phrase_by_phrase(fused, text, parts):
    out = ex.explain(fused, text)
    assert [p.unit for p in out.parts] == ["phrase"] * parts
    assert "".join(text[p.start:p.end] for p in out.parts) == text
    target = fused.labels.index(out.label)
    log_p = _fused_log_p(fused, text, [(p.start, p.end) for p in out.parts], target)
    np.testing.assert_allclose([p.log_prob for p in out.parts], log_p[0] - log_p[1:], atol=1e-4)


def test_the_ngram_shares_add_up_and_credit_each_part_with_its_own_words(fused):
    ngram = fused.ngram
    sport, tech = "the match goal team player coach season " * 3, "software chip computer network data code " * 3
    text = sport + "\n\n" + tech
    whole = ngram.scores([text])[0] - ngram.intercept
    np.testing.assert_allclose(ngram.span_contributions(text, [(0, len(text))])[0], whole, atol=1e-5)
    parts = ngram.span_contributions(text, [(0, len(sport) + 2), (len(sport) + 2, len(text))])
    np.testing.assert_allclose(parts.sum(0), whole, atol=0.05 * np.abs(whole).max())  # but the bigram between
    s, t = ngram_labels = fused.labels.index("sport"), fused.labels.index("tech")
    assert parts[0, s] > parts[1, s] and parts[1, t] > parts[0, t], ngram_labels


def test_the_top_parts_are_ranked_by_size_and_written_as_json(fused):
    out = ex.explain(fused, " ".join(make_corpus(60, seed=7).text))
    top = json.loads(out.to_json(3))
    assert len(top) == 3 and set(top[0]) >= {"start", "end", "effect", "log_prob", "encoder", "ngrams", "unit"}
    sizes = [abs(p["effect"]) for p in top]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == pytest.approx(max(abs(p.effect) for p in out.parts),
                                                                              abs=1e-4)
    assert ex.explain(fused, "   ") is None


def test_classify_explain_writes_an_explanation_column(tmp_path):
    model = make_model_dir(tmp_path / "tiny")
    frame = make_corpus(6, seed=3, long_every=2)
    frame.loc[2, "text"] = ""
    frame.to_csv(tmp_path / "in.csv", index=False)
    assert main(["classify", "--model", str(model), "--input", str(tmp_path / "in.csv"), "--output",
                 str(tmp_path / "out.csv"), "--explain", "2"]) == 0
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    for text, cell, error in zip(frame.text, out.explanation, out.error):
        if error:
            assert cell == "[]"
            continue
        parts = json.loads(cell)
        assert 1 <= len(parts) <= 2 and all(0 <= p["start"] < p["end"] <= len(text) for p in parts)


BBC = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "bbc_news" / "bbc_news.csv.xz"
BUNDLED = __import__("pathlib").Path(__file__).resolve().parents[1] / "app" / "models" / "bbc_news"


@pytest.mark.skipif(not BBC.is_file(), reason="needs ../shared/data/bbc_news")
def test_in_a_mixed_document_the_parts_of_the_predicted_class_support_it_and_the_others_do_not():
    """An article of one class followed by two of another, the bundled model: whichever class it predicts, the
    parts from that class's articles raise its odds and the parts from the other class's lower them."""
    frame = pd.read_csv(BBC)
    frame = frame[frame["split"] == "test"] if "split" in frame else frame
    md = prepare(load_model_dir(BUNDLED), precision="float32")
    rng = np.random.default_rng(0)
    for trial in range(6):
        a, b = rng.choice(md.labels, 2, replace=False)
        first = frame[frame.label == a].sample(1, random_state=trial).text.iloc[0]
        rest = frame[frame.label == b].sample(2, random_state=trial + 100).text.tolist()
        text = "\n\n".join([first, *rest])
        out = ex.explain(md, text)
        cut = len(first)
        own = sum(p.effect for p in out.parts if p.end <= cut)
        other = sum(p.effect for p in out.parts if p.start >= cut)
        if out.label == a:
            assert own > 0 > other, (trial, own, other)
        else:
            assert out.label == b and other > 0 > own - 0.05, (trial, own, other)

"""Property tests (Hypothesis, derandomized so that CI is deterministic) for the three places a document is cut
up: the tokenizer (any text), the segmenter (any length) and the batchers (any batch mix)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.data.bpe_tokenizer import SPECIAL, encode_batch, train_tokenizer
from pipelines.model.inference import _batches, predict
from pipelines.model.model_dir import load_model_dir
from pipelines.training.recipe import bucketed_batches
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir
from txl_core.classifier import TXLDocumentClassifier

SETTINGS = dict(deadline=None, derandomize=True, database=None)
TEXT = st.text(st.characters(codec="utf-8"), max_size=300) | st.text(max_size=40).map(lambda t: t * 50)
LENGTHS = st.lists(st.integers(0, 600), max_size=60)


@functools.lru_cache(maxsize=None)
def tokenizer():
    return train_tokenizer(make_corpus(40, seed=3)["text"], vocab_size=300)


@functools.lru_cache(maxsize=None)
def tiny_model_dir():
    return load_model_dir(make_model_dir(Path(tempfile.mkdtemp(prefix="txl-props-")) / "m"))


@settings(max_examples=150, **SETTINGS)
@given(TEXT)
def test_any_text_encodes_to_ordinary_ids_with_offsets_inside_the_text(text):
    tok = tokenizer()
    enc = tok.encode(text, add_special_tokens=False)
    assert all(len(SPECIAL) <= i < tok.get_vocab_size() for i in enc.ids)  # never <pad>, <unk>, <eos>
    assert bool(enc.ids) == bool(text)  # nothing is dropped; only "" is empty
    starts, ends = [s for s, _ in enc.offsets], [e for _, e in enc.offsets]
    assert ends == sorted(ends)
    # NFKC may insert characters ("¸" -> " ̧"): the inserted space then maps past the character it came from,
    # so starts are monotone only where normalization leaves the text alone (the explanation view tolerates it)
    assert starts == sorted(starts) or tok.normalizer.normalize_str(text) != text
    assert all(0 <= s <= e <= len(text) for s, e in enc.offsets)
    assert encode_batch(tok, [text, "", text]) == [enc.ids, [], enc.ids]  # batch = one at a time


@functools.lru_cache(maxsize=None)
def segmenter() -> TXLDocumentClassifier:
    return TXLDocumentClassifier(tiny_config(num_labels=2)).eval()


@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=5))
def test_segments_cover_every_token_once_in_order(lengths):
    model, seg_len = segmenter(), tiny_config().segment_len
    n = torch.tensor(lengths)
    ids = torch.randint(0, 53, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(0))
    seen = {b: [] for b in range(len(lengths))}
    with torch.no_grad():
        for seg in model.iter_segments(ids, n):
            assert seg.hidden.size(1) <= seg_len and seg.valid.shape == seg.hidden.shape[:2]
            for row, b in enumerate(seg.rows.tolist()):
                positions = (seg.start + torch.nonzero(seg.valid[row]).flatten()).tolist()
                assert positions, "a document stays in the batch only while it has tokens left"
                seen[b] += positions
                assert bool(seg.is_last[row]) == (positions[-1] == lengths[b] - 1)
    assert all(seen[b] == list(range(length)) for b, length in enumerate(lengths))


@settings(max_examples=200, **SETTINGS)
@given(LENGTHS, st.integers(1, 20), st.integers(0, 3))
def test_training_batches_hold_every_document_once(lengths, batch_size, seed):
    batches = bucketed_batches(lengths, batch_size=batch_size, seed=seed)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert batches == bucketed_batches(lengths, batch_size=batch_size, seed=seed)  # a resumed epoch replays it


@settings(max_examples=200, **SETTINGS)
@given(LENGTHS, st.integers(1, 20), st.integers(1, 4000))
def test_inference_batches_hold_every_document_once_within_the_budget(lengths, batch_size, max_tokens):
    batches = _batches(lengths, batch_size=batch_size, max_tokens=max_tokens)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= batch_size
        padded = max(lengths[i] for i in b) * len(b)
        assert len(b) == 1 or padded <= max_tokens  # a single long document is never refused


WORDS = st.sampled_from("the team won vote chip code minister cup data law  ,.!".split(" "))
DOC = st.lists(WORDS, min_size=0, max_size=120).map(" ".join) | st.sampled_from(["", "   ", "é" * 70])


@settings(max_examples=12, **SETTINGS)
@given(st.lists(DOC, min_size=1, max_size=9), st.integers(1, 5), st.randoms(use_true_random=False))
def test_a_prediction_does_not_depend_on_the_batch_mix(texts, batch_size, rng):
    md = tiny_model_dir()
    alone = [predict(md, [t])[0] for t in texts]
    order = list(range(len(texts)))
    rng.shuffle(order)
    mixed = predict(md, [texts[i] for i in order], batch_size=batch_size, max_tokens=rng.choice([40, 65536]))
    for got, i in zip(mixed, order):
        assert got.error == alone[i].error and got.n_tokens == alone[i].n_tokens
        for label, p in alone[i].probs.items():
            assert abs(got.probs[label] - p) <= 1e-5

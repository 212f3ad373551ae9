"""Long texts are tokenized in pieces cut at spaces: the ids and offsets equal those of the whole text wherever
a space comes within `REACH` pieces (here: pieces of at least 10 characters, a plain space every 8 words)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.data.bpe_tokenizer import train_tokenizer
from pipelines.data.token_ids import REACH, cuts, encode
from pipelines.training.starts import _bert_tokenizer
from tests.synth import make_corpus
from tests.test_init_from import bert_dir

BPE = train_tokenizer(make_corpus(60, seed=0)["text"], vocab_size=300)
WORDS = ["alpha", "beta", "déjà", "Vu", "naïve", "x", "42", "3.5", "a.b", "e-mail", "ü", "ﬁle", "tax", "!!", "don't"]
SPACES = [" ", "  ", "\n", "\t", " \n ", "\n\n", "\u3000", " \u00a0"]


def _text(words, spaces) -> str:
    return "".join(w + spaces[i % len(spaces)] for i, w in enumerate(words))


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=80),
       spaces=st.lists(st.sampled_from(SPACES), min_size=1, max_size=7), piece=st.integers(10, 40),
       lead=st.sampled_from(["", " ", "\n"]))
def test_pieces_give_the_whole_texts_ids_and_offsets(words, spaces, piece, lead):
    text = lead + _text(words, [*spaces, " "])  # a plain space within every 8 words: a cut within REACH pieces
    whole = BPE.encode(text, add_special_tokens=False)
    (got,) = encode(BPE, [text], offsets=True, piece_chars=piece)
    assert got.ids.tolist() == whole.ids
    # every token that covers characters covers the same ones (a lone space token's empty span may sit either
    # side of its space)
    for (a, b), (c, d) in zip(got.offsets.tolist(), whole.offsets):
        assert (a, b) == (c, d) if d > c else (b - a == 0 and abs(a - c) <= 1)


def test_wordpiece_pieces_equal_the_whole(tmp_path):
    bert = _bert_tokenizer(bert_dir(tmp_path))
    text = _text(WORDS * 20, SPACES)
    (got,) = encode(bert, [text], piece_chars=17)
    assert got.ids.tolist() == bert.encode(text, add_special_tokens=False).ids


def test_cuts_fall_on_a_space_after_a_word_and_bound_the_pieces():
    text = _text(WORDS * 50, SPACES)
    bounds = cuts(text, 30)
    assert bounds[0] == 0 and bounds[-1] == len(text) and bounds == sorted(set(bounds))
    for at in bounds[1:-1]:
        assert text[at] == " " and not text[at - 1].isspace()
    assert max(b - a for a, b in zip(bounds, bounds[1:])) < 30 + 20  # to the next space after a word
    assert cuts("x" * 90, 10) == [0, 90]  # no space, but within REACH pieces: one piece
    assert cuts("x" * 100, 10) == [0, 90, 100]  # past it: cut inside the run


def test_short_and_empty_texts_are_encoded_whole():
    texts = ["", "alpha beta", "x " * 10]
    got = encode(BPE, texts)
    assert [t.ids.tolist() for t in got] == [e.ids for e in BPE.encode_batch(texts, add_special_tokens=False)]
    assert got[0].ids.dtype == np.int32 and got[0].offsets is None


def test_text_without_spaces_is_cut_at_marks_and_bounded():
    """Base64 (no spaces) is cut before a '/' or '+' that follows a letter or digit, where byte-level BPE splits
    too (reading the mark with a space before it): the ids differ from the whole text's only at the cuts. A run
    of letters alone is cut every REACH + 1 pieces."""
    import base64
    import random
    blob = base64.b64encode(random.Random(0).randbytes(30_000)).decode()
    bounds = cuts(blob, 500)
    assert len(bounds) > len(blob) // (500 * (1 + REACH)) and all(blob[b] in "+/" for b in bounds[1:-1])
    (got,) = encode(BPE, [blob], piece_chars=500, offsets=True)
    whole = BPE.encode(blob, add_special_tokens=False)
    # away from the cuts (more than 8 characters), every token of the whole text is a token of the pieces
    near = lambda a, b: any(abs(a - c) <= 8 or abs(b - c) <= 8 for c in bounds[1:-1])  # noqa: E731
    theirs = {(a, b, i) for (a, b), i in zip(whole.offsets, whole.ids) if not near(a, b)}
    ours = {(a, b, i) for (a, b), i in zip(got.offsets.tolist(), got.ids.tolist())}
    assert theirs <= ours and len(theirs) > 0.9 * len(whole.ids)
    run = "ab" * 50_000
    bounds = cuts(run, 500)
    assert bounds[0] == 0 and bounds[-1] == len(run)
    assert max(b - a for a, b in zip(bounds, bounds[1:])) <= 500 * (1 + REACH)

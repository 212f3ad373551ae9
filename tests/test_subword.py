"""The byte-level BPE tokenizer: special ids, save/load, any text encodes to valid ids and decodes back."""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.data.bpe_tokenizer import encode_batch, load, save, train_tokenizer
from pipelines.errors import UserError

CORPUS = ["the match ended with a late goal for the home team",
          "the new chip runs the code in the cloud",
          "Ministers debated the new tax law in parliament"] * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=400)


def test_nfkc_folds_compatibility_forms(tok):
    assert tok.decode(encode_batch(tok, ["ﬁne ＡＢＣ"])[0]) == unicodedata.normalize("NFKC", " ﬁne ＡＢＣ")


def test_special_tokens_and_vocabulary_size(tok):
    assert [tok.token_to_id(t) for t in ("<pad>", "<unk>", "<eos>")] == [0, 1, 2]
    assert 259 < tok.get_vocab_size() <= 400  # every byte, the specials, and some merges
    assert len(encode_batch(tok, ["the match"])[0]) < len("the match")  # merges were learned


def test_save_load_round_trip(tok, tmp_path):
    path = save(tok, tmp_path / "model")
    assert path == tmp_path / "model" / "tokenizer.json"
    back = load(tmp_path / "model")
    texts = CORPUS[:3] + ["unseen wörds ＡＢＣ 東京 😀"]
    assert encode_batch(back, texts) == encode_batch(tok, texts)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        load(tmp_path)


def test_empty_and_missing_texts(tok):
    ids = encode_batch(tok, ["", None, "   ", "a"])
    assert ids[0] == [] and ids[1] == [] and len(ids[2]) > 0 and len(ids[3]) > 0


def test_training_on_empty_texts_still_covers_every_byte():
    empty = train_tokenizer(["", "", None], vocab_size=300)
    assert all(i < empty.get_vocab_size() for i in encode_batch(empty, ["any text 東京"])[0])


def test_long_text_is_not_truncated_and_caller_settings_are_kept(tok):
    tok.enable_truncation(8)
    try:
        (ids,) = encode_batch(tok, ["goal " * 5000])
        assert len(ids) >= 5000 and tok.truncation is not None
    finally:
        tok.no_truncation()


@pytest.mark.parametrize("lowercase", [False, True])
def test_lowercase_option(lowercase):
    t = train_tokenizer(CORPUS, vocab_size=400, lowercase=lowercase)
    same = encode_batch(t, ["Ministers"]) == encode_batch(t, ["ministers"])
    assert same is lowercase


def test_a_big_corpus_is_sampled_from_everywhere():
    corpus = ["alpha beta alpha beta"] * 500 + ["gamma delta gamma delta"] * 500  # sorted, like by class
    t = train_tokenizer(corpus, vocab_size=400, max_chars=3000)
    assert t.token_to_id("Ġalpha") is not None and t.token_to_id("Ġgamma") is not None


def test_too_small_vocabulary_is_refused():
    with pytest.raises(UserError, match="at least 259"):
        train_tokenizer(CORPUS, vocab_size=100)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_encodes_to_valid_ids_and_decodes_back(tok, text):
    (ids,) = encode_batch(tok, [text])
    assert all(0 <= i < tok.get_vocab_size() for i in ids)
    assert tok.token_to_id("<unk>") not in ids  # byte-level: nothing is unknown
    normalized = tok.normalizer.normalize_str(text)  # its NFKC tables, which may be older than Python's
    expected = normalized if not normalized or normalized.startswith(" ") else " " + normalized
    assert tok.decode(ids) == expected  # lossless up to NFKC and the prefix space


def test_text_spelling_a_special_token_is_just_text(tok):
    (ids,) = encode_batch(tok, ["<pad> <unk><eos>"])
    assert not {0, 1, 2} & set(ids) and tok.decode(ids) == " <pad> <unk><eos>"

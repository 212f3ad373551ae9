"""`WordTokenizer` against the reference's golden tokenizer outputs (transformers 4.37.2, NOTES.md §12).

The goldens and `tok_small` ship in tests/fixtures/tokenizer; the copies in ../shared/reference are
checked too when present. Both vocabulary files (HF `vocab.pkl`, source `vocab.txt`) must give every case.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_REFERENCE
from hypothesis import given, settings
from hypothesis import strategies as st

from txl_core.word_vocab import WordTokenizer, detokenize_numbers, tokenize_numbers

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizer"
GOLDEN = json.loads((FIXTURES / "golden_tokenizer.json").read_text())
CASES = [pytest.param(c, id=f"case{i}") for i, c in enumerate(GOLDEN["cases"])]


def _sources():
    """Every (root, vocabulary directory) pair: the fixtures always, ../shared when it is there."""
    params = []
    for root, tag in ((FIXTURES, "fixture"), (SHARED_REFERENCE, "shared")):
        marks = [] if root.is_dir() else [pytest.mark.skip(reason=f"reference not found at {root}")]
        for sub in ("tok_small", "tok_small_src"):
            params.append(pytest.param(root / sub, id=f"{tag}-{sub}", marks=marks))
    return params


@pytest.fixture(params=_sources(), scope="module")
def tok(request):
    return WordTokenizer.from_pretrained(request.param)


def test_shared_golden_equals_fixture_copy():
    shared = SHARED_REFERENCE / "golden_tokenizer.json"
    if not shared.is_file():
        pytest.skip(f"{shared} not found")
    assert json.loads(shared.read_text()) == GOLDEN


def test_vocabulary_and_special_ids(tok):
    assert tok.idx2sym == GOLDEN["idx2sym"]
    assert tok.vocab_size == GOLDEN["vocab_size"] and len(tok) == GOLDEN["len_tokenizer"]
    assert tok.special_tokens == GOLDEN["all_special_tokens"]
    assert tok.added_tokens == GOLDEN["added_tokens_encoder"]
    assert {t: tok.token_to_id(t) for t in GOLDEN["special_ids"]} == GOLDEN["special_ids"]
    assert tok.unk_id == GOLDEN["unk_idx"] and tok.eos_id == 0


@pytest.mark.parametrize("case", CASES)
def test_golden_case(tok, case):
    assert tok.tokenize(case["text"]) == case["tokens"] == case["moses_pipeline"]
    assert tok.encode(case["text"]) == case["ids"] == case["encode"]
    assert tok.tokenize(case["text"], add_eos=True) == case["_tokenize_add_eos"]
    assert tok.encode(case["text"], add_eos=True) == case["ids"] + [tok.eos_id]
    assert tok.decode(case["ids"]) == case["decode"]


@pytest.mark.parametrize("case", CASES)
def test_golden_lower_case(tok, case):
    lower = dataclasses.replace(tok, lower_case=True)
    assert lower.tokenize(case["text"]) == case["tokens_lower_case"]


def test_lower_case_from_config_keeps_specials(tmp_path):
    shutil.copytree(FIXTURES / "tok_small", tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text()) | {"lower_case": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = WordTokenizer.from_pretrained(tmp_path)
    assert tok.tokenize("The <formula> AND <EOS>x") == ["the", "<formula>", "and", "<eos>", "x"]
    # HF lowercases character by character, so a word-final capital sigma becomes σ, not ς
    assert tok.tokenize("ΟΔΟΣ") == ["οδοσ"] and "ΟΔΟΣ".lower() == "οδος"


def _historic_state(idx2sym):
    """kimiyoung data_utils.Vocab.__dict__, as the historic wt103 vocab.pkl holds it."""
    return {"special": ["<eos>"], "min_freq": 0, "max_size": None, "lower_case": False, "delimiter": None,
            "vocab_file": None, "counter": Counter({s: 100 - i for i, s in enumerate(idx2sym)}),
            "idx2sym": list(idx2sym), "sym2idx": OrderedDict((s, i) for i, s in enumerate(idx2sym)),
            "eos_idx": 0}


def test_historic_torch_save_vocab(tmp_path):
    torch.save(_historic_state(GOLDEN["idx2sym"]), tmp_path / "vocab.pkl", _use_new_zipfile_serialization=False)
    assert pickle.loads((tmp_path / "vocab.pkl").read_bytes()) == 119547037146038801333356  # legacy magic
    tok = WordTokenizer.from_pretrained(tmp_path / "vocab.pkl")
    assert tok.unk_idx is None and tok.unk_id == GOLDEN["idx2sym"].index("<unk>")  # via sym2idx['<unk>']
    for case in GOLDEN["cases"]:
        assert tok.encode(case["text"]) == case["ids"]
        assert tok.decode(case["ids"]) == case["decode"]


def test_historic_options_come_from_config_not_pickle(tmp_path):
    state = _historic_state(GOLDEN["idx2sym"]) | {"lower_case": True}  # the reference ignores this key
    torch.save(state, tmp_path / "vocab.pkl", _use_new_zipfile_serialization=False)
    assert WordTokenizer.from_pretrained(tmp_path).tokenize("The cat") == ["The", "cat"]


def test_vocab_pkl_with_an_object_inside_still_loads(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return subprocess.call, (["touch", str(target)],)

    state = _historic_state(GOLDEN["idx2sym"]) | {"moses_tokenizer": Evil(), "unk_idx": 27}
    (tmp_path / "vocab.pkl").write_bytes(pickle.dumps(state))
    tok = WordTokenizer.from_pretrained(tmp_path)
    assert tok.encode("The cat sat") == [6, 2, 7] and not target.exists()


def _vocab_txt(tmp_path, lines, config=None):
    (tmp_path / "vocab.txt").write_text("".join(line + "\n" for line in lines))
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return WordTokenizer.from_pretrained(tmp_path)


def test_vocab_txt_first_field_repeats_and_unk_preference(tmp_path):
    tok = _vocab_txt(tmp_path, ["<eos> 5", "<unk> 4", "a 3", "a 2", "<UNK> 1", "b"])
    assert tok.idx2sym == ["<eos>", "<unk>", "a", "<UNK>", "b"]
    assert tok.unk_id == 3 and tok.encode("zzz") == [3]  # the reference prefers <UNK>


@pytest.mark.parametrize("lines, message", [(["a", "b"], "neither <unk>"), (["<unk>", "", "a"], "blank")])
def test_bad_vocab_txt(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        _vocab_txt(tmp_path, lines)


def test_specials_outside_vocab_become_added_tokens(tmp_path):
    tok = _vocab_txt(tmp_path, ["<unk>", "a", "."])
    assert tok.added_tokens == {"<eos>": 3, "<unk>": 0, "<formula>": 4}
    assert (tok.vocab_size, len(tok), tok.eos_id) == (3, 5, 3)
    assert tok.encode("a <formula> b <eos>") == [1, 4, 0, 3]
    # a past-the-vocab additional special token decodes on its own, joined by spaces, as HF does
    assert tok.decode([1, 4, 0, 3]) == "a <formula> <unk> <eos>"
    # ... and HF's clean-up then removes the space before "."
    assert tok.decode([1, 4, 2]) == "a <formula>."
    assert dataclasses.replace(tok, clean_up_tokenization_spaces=False).decode([1, 4, 2]) == "a <formula> ."


def test_character_level_and_double_eos(tmp_path):
    tok = _vocab_txt(tmp_path, ["<eos>", "<unk>", "a", "b"], config={"delimiter": ""})
    assert tok.tokenize(" ab a ") == ["a", "b", " ", "a"]
    assert tok.tokenize("ab", add_eos=True) == ["a", "b", "<eos>"]
    assert tok.tokenize("ab", add_double_eos=True) == ["<S>", "a", "b", "<S>"]
    assert tok.encode("ab<eos>c") == [2, 3, 0, 1]


def test_numbers_round_trip():
    tokens = tokenize_numbers(["$", "5,000", "1.73", "m"])
    assert tokens == ["$", "5", "@,@", "000", "1", "@.@", "73", "m"]
    assert detokenize_numbers(" ".join(tokens)) == "$ 5,000 1.73 m"


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([len(tok)])


def test_save_pretrained_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer_config.json", "vocab.txt"]
    again = WordTokenizer.from_pretrained(tmp_path)
    assert dataclasses.asdict(again) == dataclasses.asdict(tok)
    for case in GOLDEN["cases"]:
        assert again.encode(case["text"]) == case["ids"] and again.decode(case["ids"]) == case["decode"]


def test_save_refuses_what_vocab_txt_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="space-containing"):
        WordTokenizer(["<unk>", "a b"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither <unk>"):
        WordTokenizer(["<eos>", "a"]).save_pretrained(tmp_path)


@pytest.mark.slow  # a fresh interpreter imports torch
def test_imports_without_sacremoses_and_says_what_is_missing():
    code = ("import sys; sys.modules['sacremoses'] = None\n"
            "from txl_core.word_vocab import WordTokenizer\n"
            f"tok = WordTokenizer.from_pretrained({str(FIXTURES / 'tok_small')!r})\n"
            "assert tok.token_to_id('cat') == 2\n"
            "try:\n    tok.tokenize('x')\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "pip install sacremoses" in out.stdout


_TOK_SMALL = WordTokenizer.from_pretrained(FIXTURES / "tok_small")
_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=60) | st.lists(
    st.sampled_from(["<eos>", "<unk>", "<formula>", "5,000", "1.73", "-", "'s", " ", "the", "Ω", "\n", "@"]),
    max_size=12).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, lower=st.booleans(), add_eos=st.booleans())
def test_any_text_encodes_inside_the_vocabulary(text, lower, add_eos):
    tok = dataclasses.replace(_TOK_SMALL, lower_case=lower) if lower else _TOK_SMALL
    ids = tok.encode(text, add_eos=add_eos)
    assert all(0 <= i < len(tok) for i in ids)
    assert len(ids) == len(tok.tokenize(text, add_eos=add_eos))
    assert isinstance(tok.decode(ids), str)

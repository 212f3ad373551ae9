"""Tables that parse into something else than the user meant: rows one field longer than the header, a header
longer than the reader's first look, and text columns that hold no text, or no language."""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from pipelines.data.decoding import not_prose
from pipelines.data.tables import PEEK_BYTES, iter_table, read_table, text_column_problem
from pipelines.errors import UserError


def test_rows_longer_than_the_header_are_refused_not_shifted(tmp_path):
    path = tmp_path / "rag.csv"
    path.write_text("text\nthe team won, the final\nthe vote, was lost\n")  # pandas made 'the team won' an index
    for read in (lambda: read_table(path), lambda: list(iter_table(path, text_column="text"))):
        with pytest.raises(UserError, match="more fields than the header"):
            read()


def test_a_header_longer_than_the_first_look_is_read_whole(tmp_path):
    columns = [f"column_{i:06d}" for i in range(PEEK_BYTES // 10)]  # a header of about 1.4 x PEEK_BYTES
    path = tmp_path / "wide.csv"
    path.write_text(",".join(["text", *columns]) + "\n" + ",".join(["the team won", *["1"] * len(columns)]) + "\n")
    chunk = next(iter_table(path, text_column="text", columns=["text", columns[-1]]))
    assert chunk["text"].tolist() == ["the team won"] and chunk[columns[-1]].tolist() == ["1"]
    path.write_text(",".join(["text", *columns, "text"]) + "\n")  # a repeat past the first look is still seen
    with pytest.raises(UserError, match="text"):
        read_table(path)


@pytest.mark.parametrize("values, phrase", [
    (["", " ", ""], "is empty in all of the first 3 rows"),
    ([base64.b64encode(random.Random(i).randbytes(300)).decode() for i in range(10)], "almost no spaces"),
    (["".join(chr(0xE000 + (i * 7919 + j * 31) % 6000) for j in range(200)) for i in range(10)], "private-use"),
    (["3.14", "42", "-7", "1e5", "12%"], "holds numbers, not text"),
    ([json.dumps({"title": f"t{i}", "body": "the team won"}) for i in range(5)], "holds JSON objects"),
])
def test_text_columns_without_text_are_named(values, phrase):
    problem = text_column_problem(values, "in.csv", "text")
    assert problem is not None and phrase in problem and problem.startswith("in.csv: column 'text'")


def test_real_text_is_no_problem():
    texts = ["The minister lost the vote.", "3 goals in 90 minutes", "{curly} braces in prose", "2024"]
    assert text_column_problem(texts, "in.csv", "text") is None


@pytest.mark.parametrize("text", [
    "The minister lost the vote, and the opposition called for an election before the summer recess. " * 20,
    "中华人民共和国是工人阶级领导的、以工农联盟为基础的人民民主专政的社会主义国家。" * 30,
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 40,
    "اللغة العربية هي أكثر اللغات السامية تحدثا وإحدى أكثر اللغات انتشارا في العالم " * 20,
    "Привет, this is a mixed текст with English words и русские слова. 😀🎉 #blessed ❤️‍🔥 " * 20,
    Path(__file__).read_text(),  # code: spaces, one script
])
def test_language_of_any_script_is_prose(text):
    assert not_prose(text) is None


def test_text_that_is_no_language_is_named():
    rng = random.Random(0)
    assert "almost no spaces" in not_prose(base64.b64encode(rng.randbytes(3000)).decode())
    assert "almost no spaces" in not_prose(rng.randbytes(1500).hex())
    assert "unassigned or private-use" in not_prose("".join(chr(rng.randrange(0x20, 0x30000)) for _ in range(5000)))
    starts = [0x41, 0x391, 0x410, 0x5D0, 0x627, 0x905, 0x985, 0xE01, 0x10D0, 0x1200]  # ten alphabets' first letters
    mixed = " ".join("".join(chr(rng.choice(starts) + rng.randrange(20)) for _ in range(6)) for _ in range(400))
    assert "letters of" in not_prose(mixed) and "scripts with none dominant" in not_prose(mixed)


def test_a_multilingual_corpus_is_prose():
    parts = ["The minister lost the vote on the budget. ", "Le ministre a perdu le vote sur le budget. ",
             "Министр проиграл голосование по бюджету. ", "Ο υπουργός έχασε την ψηφοφορία. ",
             "השר הפסיד בהצבעה על התקציב. ", "خسر الوزير التصويت على الميزانية. ", "मंत्री बजट पर वोट हार गए। "]
    assert not_prose("".join(parts) * 20) is None


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_table_of_too_many_columns_is_refused_at_its_header(tmp_path, suffix):
    """A table of documents has a few columns; 120,000 ran past 150 s (a quadratic repeat check, then pandas):
    refused from the header, in one line."""
    import pandas as pd

    from pipelines.data.tables import MAX_COLUMNS
    frame = pd.DataFrame([["the team won", *range(MAX_COLUMNS)]], columns=["text", *map(str, range(MAX_COLUMNS))])
    path = tmp_path / f"wide{suffix}"
    write = {".csv": lambda f: f.to_csv(path, index=False), ".parquet": lambda f: f.to_parquet(path),
             ".jsonl": lambda f: f.to_json(path, orient="records", lines=True)}[suffix]
    write(frame)
    with pytest.raises(UserError, match=f"has {MAX_COLUMNS + 1:,} columns"):
        next(iter_table(path, text_column="text"))
    narrow = frame.iloc[:, :MAX_COLUMNS]
    write(narrow)
    assert next(iter_table(path, text_column="text"))["text"].tolist() == ["the team won"]

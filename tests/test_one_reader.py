"""`txl` and the app read a table through one reader: for the same bytes they give the same documents (same
texts, same order), the same column and the same decoding note; and the rule that picks the text column."""
from __future__ import annotations

import io
import re
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import app.tables
from app.extract import ExtractError, extract_documents
from pipelines.cli import main
from pipelines.data.tables import Source, iter_table, parquet_unpacked_bytes, read_table, table_columns
from pipelines.data.text_column import SAMPLE_ROWS, find_text_column, pick_text_column, text_like_columns
from pipelines.errors import UserError
from tests.tiny_model import make_model_dir

# Text that breaks naive readers: delimiters, quotes, line breaks, "NA", numbers, accents, emoji, U+2028
TRICKY = st.sampled_from([",", ";", "\t", '"', "\n", "\r\n", " ", "NA", "007", "é", "€", "東京", "😀", "\u2028"])
UTF8_TEXT = st.lists(st.characters(blacklist_categories=("Cs", "Cc")) | TRICKY, max_size=12).map("".join)
# bytes 0xC0-0xFF only: never a UTF-8 continuation byte, so the file cannot be valid UTF-8 by chance
NOT_UTF8_TEXT = st.lists(st.sampled_from([chr(c) for c in range(0xC0, 0x100)] + list("ab ,;\"\n")),
                         max_size=12).map("".join)
ENCODINGS = {"csv": ["utf-8", "utf-8-sig", "utf-16", "cp1252"], "tsv": ["utf-8", "utf-16", "cp1252"],
             "jsonl": ["utf-8", "utf-16", "cp1252"], "parquet": [None]}


def table_bytes(frame: pd.DataFrame, fmt: str, encoding: str | None) -> bytes:
    if fmt == "parquet":
        out = io.BytesIO()
        frame.to_parquet(out, index=False)
        return out.getvalue()
    if fmt == "jsonl":
        text = frame.to_json(orient="records", lines=True, force_ascii=False)
    else:
        text = frame.to_csv(sep="\t" if fmt == "tsv" else ",", index=False)
    return text.encode(encoding)


def fallback_count(notes: list[str]) -> int:
    """The byte count the one decoding note gives (0 without a note)."""
    counts = [int(m) for n in notes for m in re.findall(r"read (\d+) byte\(s\) as Windows-1252", n)]
    assert len(counts) <= 1, notes
    return counts[0] if counts else 0


def cli_documents(path: Path, column: str | None, chunk_rows: int) -> tuple[str, list[str], list[str]]:
    """(column, texts, warnings) as `txl classify` reads a file: in chunks, the column named or picked by
    the rule, a row with a blank text not a document."""
    column = find_text_column(path, column)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = [t.strip() for chunk in iter_table(path, chunk_rows=chunk_rows, text_column=column)
                 for t in chunk[column] if t.strip()]
    return column, texts, [str(w.message) for w in caught]


def assert_same_documents(name: str, data: bytes, column: str | None, expected: tuple[str, list[str]], *,
                          chunk_rows: int, fallback: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        cli_column, cli_texts, cli_notes = cli_documents(path, column, chunk_rows)
    result = extract_documents(name, data, text_column=column)
    assert (cli_column, cli_texts) == (result.text_column, [d.text for d in result.documents]) == expected
    assert fallback_count(cli_notes) == fallback_count(result.warnings) == fallback


@st.composite
def named_column_tables(draw):
    """(format, encoding, frame) whose 'text' column holds arbitrary texts, blank ones included."""
    fmt = draw(st.sampled_from(list(ENCODINGS)))
    encoding = draw(st.sampled_from(ENCODINGS[fmt]))
    texts = draw(st.lists(NOT_UTF8_TEXT if encoding == "cp1252" else UTF8_TEXT, min_size=1, max_size=8)
                 .filter(lambda ts: any(t.strip() for t in ts)))
    return fmt, encoding, pd.DataFrame({"label": [f"l{i % 3}" for i in range(len(texts))], "text": texts})


@st.composite
def unnamed_column_tables(draw):
    """(format, encoding, frame) where the rule must find the text among an id, a score, a flag and a title."""
    fmt = draw(st.sampled_from(list(ENCODINGS)))
    encoding = draw(st.sampled_from(ENCODINGS[fmt]))
    rows = draw(st.integers(1, 8))
    alphabet = NOT_UTF8_TEXT if encoding == "cp1252" else UTF8_TEXT
    return fmt, encoding, pd.DataFrame({
        "id": range(rows), "score": [i / 7 for i in range(rows)], "flag": (["yes", "no"] * rows)[:rows],
        "title": draw(st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=rows, max_size=rows)),
        "abstract": [f"abstract {t}" for t in draw(st.lists(alphabet, min_size=rows, max_size=rows))]})


def high_bytes(data: bytes, encoding: str | None) -> int:
    return sum(b >= 0x80 for b in data) if encoding == "cp1252" else 0


@settings(max_examples=60, deadline=None)
@given(named_column_tables(), st.integers(1, 4))
def test_cli_and_app_give_the_same_documents_for_a_named_column(table, chunk_rows):
    fmt, encoding, frame = table
    data = table_bytes(frame, fmt, encoding)
    expected = ("text", [t.strip() for t in frame["text"] if t.strip()])
    assert_same_documents(f"d.{fmt}", data, "text", expected, chunk_rows=chunk_rows,
                          fallback=high_bytes(data, encoding))


@settings(max_examples=40, deadline=None)
@given(unnamed_column_tables(), st.integers(1, 4))
def test_cli_and_app_pick_the_same_column_by_the_rule(table, chunk_rows):
    fmt, encoding, frame = table
    data = table_bytes(frame, fmt, encoding)
    expected = ("abstract", [t.strip() for t in frame["abstract"]])
    assert_same_documents(f"d.{fmt}", data, None, expected, chunk_rows=chunk_rows, fallback=high_bytes(data, encoding))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "m")


@pytest.mark.parametrize("fmt, encoding", [("csv", "utf-8"), ("csv", "cp1252"), ("tsv", "utf-16"),
                                           ("jsonl", "cp1252"), ("parquet", None)])
def test_txl_classify_reads_what_the_app_reads(capsys, model, tmp_path, fmt, encoding):
    """The real command, given the column the rule picks, classifies exactly the app's documents, in order."""
    frame = pd.DataFrame({"id": [1, 2, 3, 4], "flag": ["yes", "no", "no", "yes"], "title": ["a", "b", "", "c"],
                          "abstract": ["déjà vu, “twice”", "  ", "price: 5 €\nsecond line", "café; naïve"]})
    data = table_bytes(frame, fmt, encoding)
    (tmp_path / f"in.{fmt}").write_bytes(data)
    column = find_text_column(tmp_path / f"in.{fmt}")
    args = ["classify", "--model", str(model), "--input", str(tmp_path / f"in.{fmt}"), "--text-column", column,
            "--output", str(tmp_path / "out.parquet"), "--chunk-rows", "2"]
    assert main(args) == 0, capsys.readouterr().err
    out = pd.read_parquet(tmp_path / "out.parquet")
    cli_texts = [t.strip() for t, e in zip(out[column], out["error"], strict=True) if not e]
    result = extract_documents(f"in.{fmt}", data)
    assert result.text_column == column == "abstract"
    assert [d.text for d in result.documents] == cli_texts == ["déjà vu, “twice”", "price: 5 €\nsecond line",
                                                               "café; naïve"]
    fell_back = encoding == "cp1252"
    assert ("Windows-1252" in capsys.readouterr().err) == fell_back == (fallback_count(result.warnings) > 0)


# --- the rule that picks the text column ------------------------------------------------------------------

def test_the_named_column_wins_even_when_it_is_not_text_like():
    frame = pd.DataFrame({"text": ["words here", "more words"], "n": ["1", "2"]})
    assert pick_text_column(frame, "n", name="d.csv") == "n"
    with pytest.raises(UserError, match=r"d.csv has no column 'txet' .*did you mean 'text'"):
        pick_text_column(frame, "txet", name="d.csv")


@pytest.mark.parametrize("columns, picked", [
    (["summary", "Content", "BODY"], "BODY"),  # text before body before content before document, any case
    (["document", "content"], "content"),
    (["summary", "abstract"], "abstract"),  # no preferred name: the longest mean length
])
def test_preferred_names_in_order_then_the_longest(columns, picked):
    frame = pd.DataFrame({c: [f"{c} " + "word " * i for i in (1, 2)] for c in columns})
    frame["abstract" if "abstract" in columns else columns[0]] += " and a much longer tail"
    assert pick_text_column(frame, name="d.csv") == picked


def test_ids_numbers_and_flags_are_not_text():
    frame = pd.DataFrame({"id": ["1001", "1002"], "score": [0.5, 0.25], "flag": ["TRUE", "false"],
                          "ok": ["yes", "no"], "text": ["12", "13"], "note": ["hi", "yo"]})
    assert text_like_columns(frame) == ["note"]
    assert pick_text_column(frame, name="d.csv") == "note"  # 'text' holds numbers: not taken for its name
    with pytest.raises(UserError, match="no column holds text"):
        pick_text_column(frame.drop(columns="note"), name="d.csv")


def test_only_the_first_rows_decide(tmp_path):
    """A streamed file is judged on its first SAMPLE_ROWS rows; the app, holding the whole file, on the same."""
    rows = SAMPLE_ROWS + 50
    frame = pd.DataFrame({"a": ["a long enough text"] * SAMPLE_ROWS + ["x"] * 50,
                          "b": ["short"] * SAMPLE_ROWS + ["a far, far longer text " * 40] * 50})
    assert frame["b"].map(len).mean() > frame["a"].map(len).mean()
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert find_text_column(tmp_path / "d.csv") == "a" == pick_text_column(frame, name="d.csv")
    assert len(read_table(tmp_path / "d.csv")) == rows


# --- one source abstraction -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.ndjson", "d.parquet", "d.csv.gz", "d.jsonl.xz",
                                  "d.tsv.zst", "d.csv.bz2"])
def test_bytes_read_as_the_file_does(tmp_path, name):
    frame = pd.DataFrame({"text": ["a, b", 'say "hi"', "two\nlines", "NA"], "label": ["x", "y", "x", "y"]})
    path = tmp_path / name
    if ".parquet" in name:
        frame.to_parquet(path, index=False)
    elif "json" in name:
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    upload = Source.upload(name, path.read_bytes())
    assert table_columns(upload) == table_columns(path) == ["text", "label"]
    pd.testing.assert_frame_equal(read_table(upload), read_table(path))
    chunks = [c["text"].tolist() for c in iter_table(upload, chunk_rows=3, text_column="text")]
    assert chunks == [["a, b", 'say "hi"', "two\nlines"], ["NA"]]


def test_upload_errors_name_the_upload():
    with pytest.raises(UserError, match=r"^cannot read up\.xlsx: unsupported file type"):
        read_table(Source.upload("up.xlsx", b"x"))
    with pytest.raises(UserError, match=r"^up\.csv is empty"):
        read_table(Source.upload("up.csv", b""))


def test_parquet_is_sized_from_its_footer_before_the_app_reads_it(monkeypatch):
    out = io.BytesIO()
    pd.DataFrame({"text": [f"word {i} " * 200 for i in range(50)]}).to_parquet(out)
    assert parquet_unpacked_bytes(Source.upload("d.parquet", out.getvalue())) > 10_000

    def no_read(*args, **kwargs):
        raise AssertionError("read before its size was checked")

    monkeypatch.setattr(app.tables, "load_table", no_read)
    with pytest.raises(ExtractError, match=r"unpacks to .* over the .* limit"):
        extract_documents("d.parquet", out.getvalue(), max_unpacked_bytes=10_000)

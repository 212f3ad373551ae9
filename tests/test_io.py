"""Table reading: every format and compression, streaming with absolute row numbers, decoding fallbacks, and
the one-line messages a user gets for the usual mistakes."""
from __future__ import annotations

import gzip
import random
import string
import warnings

import pandas as pd
import pytest

from pipelines.data.labeled_texts import load_labeled
from pipelines.data.tables import iter_table, read_table, table_columns
from pipelines.errors import DataWarning, UserError

# texts that break naive readers: the delimiter, quotes, newlines, "NA", a number with a leading zero, unicode
TEXTS = ['plain words', 'a, comma', 'say "hi"', 'two\nlines', 'NA', '007', 'naïve café 東京 😀', 'tab\there']
LABELS = ["x", "y", "x", "y", "x", "y", "x", "y"]
FORMATS = ["csv", "tsv", "jsonl", "ndjson", "parquet", "csv.gz", "csv.xz", "csv.zst", "csv.bz2", "tsv.gz",
           "jsonl.xz", "jsonl.zst", "ndjson.bz2"]


def write(frame: pd.DataFrame, path) -> None:
    """Write `frame` in the format and compression its name says (pandas infers the compression)."""
    name = str(path)
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif ".jsonl" in name or ".ndjson" in name:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)


def sample() -> pd.DataFrame:
    return pd.DataFrame({"text": TEXTS, "label": LABELS})


def message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "a UserError is one line"
    return text


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_reads_back_exactly(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    write(sample(), path)
    frame = read_table(path, columns=["label", "text"])
    assert list(frame.columns) == ["label", "text"]
    assert frame["text"].tolist() == TEXTS and frame["label"].tolist() == LABELS
    assert table_columns(path) == ["text", "label"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet", "csv.gz", "tsv.zst"])
def test_chunks_carry_absolute_row_numbers(tmp_path, suffix):
    frame = pd.DataFrame({"text": [f"doc {i}" for i in range(11)], "label": ["a", "b"] * 5 + ["a"]})
    path = tmp_path / f"data.{suffix}"
    write(frame, path)
    chunks = list(iter_table(path, chunk_rows=4, text_column="text"))
    assert [c.index.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert pd.concat(chunks)["text"].tolist() == frame["text"].tolist()


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet", "csv.gz", "jsonl.xz", "tsv.zst"])
def test_chunks_say_how_much_of_the_file_is_read(tmp_path, suffix):
    """The fraction a progress bar turns into a row-count estimate: rising, 1.0 with the last chunk, and
    close to the rows read so far over all rows (pandas and the decompressors read ahead in blocks, so the
    file is made large enough to span many blocks; random texts keep compression from swallowing it)."""
    rng = random.Random(0)
    rows = 20000
    texts = ["".join(rng.choices(string.ascii_letters + " ", k=rng.randint(150, 250))) for _ in range(rows)]
    path = tmp_path / f"data.{suffix}"
    write(pd.DataFrame({"text": texts, "label": ["a", "b"] * (rows // 2)}), path)
    chunks = list(iter_table(path, chunk_rows=2000, text_column="text"))
    fractions = [c.attrs["fraction_read"] for c in chunks]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0]
    estimates = [(c.index[-1] + 1) / f for c, f in zip(chunks, fractions)]
    assert all(0.6 * rows <= e <= 1.05 * rows for e in estimates[len(estimates) // 2:]), estimates
    assert estimates[-1] == rows


def test_blank_json_lines_are_skipped(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n\n')
    assert read_table(path)["text"].tolist() == ["a", "b"]
    assert [c.index.tolist() for c in iter_table(path, chunk_rows=1)] == [[0], [1]]


def test_chunks_give_missing_text_as_empty_string(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["a", None, "c"], "id": [1, 2, 3]}).to_parquet(path)
    (chunk,) = iter_table(path, chunk_rows=10, text_column="text")
    assert chunk["text"].tolist() == ["a", "", "c"]


def test_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nhello,x\n".encode("utf-8"))
    assert read_table(path, columns=["text"])["text"].tolist() == ["hello"]


def test_not_utf8_is_read_as_windows_1252_with_one_warning(tmp_path):
    """Bytes that are not UTF-8 are Windows-1252 (the euro sign and curly quotes are 0x80 and 0x92 there, C1
    controls in Latin-1), and Latin-1 for the bytes cp1252 leaves undefined (0x81)."""
    path = tmp_path / "latin.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"text,label\nprice \xa35 or \x805,x\ncaf\xe9 \x92ok\x92 \x81,y\n")
    with pytest.warns(DataWarning, match=r"read 6 byte\(s\) as Windows-1252") as record:
        frame = read_table(path)
    assert len(record) == 1
    assert frame["text"].tolist() == ["price £5 or €5", "café ’ok’ \x81"]
    with pytest.warns(DataWarning, match=r"read 6 byte\(s\) as Windows-1252") as record:
        assert list(iter_table(path, chunk_rows=1))[1]["text"].tolist() == ["café ’ok’ \x81"]
    assert len(record) == 1


def test_a_stream_warns_once_with_every_byte_that_fell_back(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text\n" + b"".join(b"row %d caf\xe9\n" % i for i in range(50)))
    with pytest.warns(DataWarning) as record:
        rows = sum(len(c) for c in iter_table(path, chunk_rows=7))
    assert rows == 50 and [str(w.message).split(" as ")[0] for w in record] == \
        ["latin.csv is not valid UTF-8 (from about row 0): read 50 byte(s)"]


def test_mixed_utf8_and_windows_1252_keeps_both(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes("text,label\ncafé,x\n".encode("utf-8") + b"\xa3 sign,y\n")
    with pytest.warns(DataWarning, match="1 byte"):
        assert read_table(path)["text"].tolist() == ["café", "£ sign"]


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "csv.gz"])
def test_utf16_with_a_bom_is_read(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    write(sample(), path)
    plain = path.read_bytes() if not suffix.endswith(".gz") else gzip.decompress(path.read_bytes())
    text = plain.decode("utf-8")
    path.write_bytes(gzip.compress(text.encode("utf-16")) if suffix.endswith(".gz") else text.encode("utf-16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_table(path, columns=["text"])["text"].tolist() == TEXTS
        assert [t for c in iter_table(path, chunk_rows=3, text_column="text") for t in c["text"]] == TEXTS


def test_utf16_without_a_bom_is_refused_as_binary(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("text,label\nhello,x\n".encode("utf-16-le"))
    with pytest.raises(UserError) as e:
        read_table(path)
    assert "looks like a binary file" in message(e)


def test_clean_utf8_gives_no_warning(tmp_path):
    path = tmp_path / "ok.csv"
    write(sample(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_table(path)


@pytest.mark.parametrize("wanted, closest", [("txet", "text"), ("Label", "label"), ("labels", "label")])
def test_missing_column_names_the_closest(tmp_path, wanted, closest):
    path = tmp_path / "data.csv"
    write(sample(), path)
    with pytest.raises(UserError) as e:
        read_table(path, columns=[wanted])
    assert f"no column {wanted!r}" in message(e) and f"did you mean {closest!r}" in message(e)


def test_missing_column_in_a_stream_fails_before_reading(tmp_path):
    path = tmp_path / "data.jsonl"
    write(sample(), path)
    with pytest.raises(UserError, match="did you mean 'text'"):
        next(iter_table(path, text_column="body_text"))


@pytest.mark.parametrize("suffix, sep, phrase", [("csv", ";", "semicolons"), ("csv", "\t", "name it .tsv"),
                                                 ("tsv", ",", "name it .csv")])
def test_wrong_delimiter_is_named(tmp_path, suffix, sep, phrase):
    """The delimiter comes from the name, never guessed: whatever column is asked for, or none."""
    path = tmp_path / f"data.{suffix}"
    sample().to_csv(path, sep=sep, index=False)
    for read in (load_labeled, table_columns, lambda p: read_table(p, columns=["text;label"])):
        with pytest.raises(UserError) as e:
            read(path)
        assert "single column" in message(e) and phrase in message(e)


@pytest.mark.parametrize("content", [b"", b"  \n\n", gzip.compress(b"")])
def test_empty_file(tmp_path, content):
    path = tmp_path / ("empty.csv.gz" if content.startswith(b"\x1f\x8b") else "empty.csv")
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        read_table(path)
    assert "is empty" in message(e)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_header_without_rows(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    write(sample().iloc[:0], path)
    if suffix == "jsonl":
        path.write_text("\n")  # JSON lines have no header: an empty line is all an empty file can be
    with pytest.raises(UserError, match="empty|no data rows"):
        read_table(path)


def test_not_found_unsupported_and_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(UserError) as e:
        read_table(tmp_path / "data.xlsx")
    assert ".csv" in message(e) and ".parquet" in message(e) and ".zst" in message(e)
    with pytest.raises(UserError, match="folder"):
        read_table(tmp_path)


@pytest.mark.parametrize("name", ["data.csv.xz", "data.csv.gz", "data.csv.zst", "data.parquet"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not compressed data at all" * 10)
    with pytest.raises(UserError) as e:
        read_table(path)
    assert "damaged" in message(e) or "Parquet" in message(e)


def test_truncated_compressed_file(tmp_path):
    path = tmp_path / "data.csv.gz"
    big = pd.DataFrame({"text": [f"document number {i} " * 20 for i in range(3000)], "label": "x"})
    write(big, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as e:
        read_table(path)
    assert "damaged" in message(e) or "truncated" in message(e)


def test_duplicated_header(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,label,text\na,x,b\n")
    with pytest.raises(UserError) as e:
        read_table(path)
    assert "repeats" in message(e) and "'text'" in message(e)


def test_bad_quoting_and_bad_json_are_one_line(tmp_path):
    csv_path, json_path = tmp_path / "bad.csv", tmp_path / "bad.jsonl"
    csv_path.write_text("text,label\na,x\nb,y,z,w\n")
    json_path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label"\n')
    for path, phrase in ((csv_path, "Expected 2 fields"), (json_path, "line 3 is not valid JSON")):
        with pytest.raises(UserError) as e:
            read_table(path)
        assert phrase in message(e)


@pytest.mark.parametrize("lines, phrase", [(['{"text": "a"}', '["b"]'], "line 2 is an array, not an object"),
                                           (['"a"', '"b"'], "line 1 is a string, not an object"),
                                           (['{"text": "a"}', "", "3"], "line 3 is a number, not an object")])
def test_a_json_line_that_is_not_an_object_is_named(tmp_path, lines, phrase):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    for read in (read_table, lambda p: list(iter_table(p, chunk_rows=1))):
        with pytest.raises(UserError) as e:
            read(path)
        assert phrase in message(e)


def test_load_labeled_drops_empty_texts_and_missing_labels(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["good", "  ", None, "fine", "no label"], "label": ["a", "b", "a", "b|a ", None]}
                 ).to_parquet(path)
    with pytest.warns(DataWarning) as record:
        texts, labels = load_labeled(path)
    assert texts == ["good", "fine"] and labels == ["a", "b|a"]
    notes = " ".join(str(w.message) for w in record)
    assert "skipped 2 of 5 rows with an empty text" in notes and "skipped 1 of 5 rows with no label" in notes


def test_load_labeled_keeps_na_text_and_numeric_labels(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nNA,01\nnull,2\n")
    assert load_labeled(path) == (["NA", "null"], ["01", "2"])


def test_load_labeled_errors_when_nothing_is_left(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n" ",x\n,y\n')
    with pytest.raises(UserError, match="no row has both"), pytest.warns(DataWarning):
        load_labeled(path)


def test_load_labeled_filters_by_split(tmp_path):
    path = tmp_path / "data.csv.xz"
    write(pd.DataFrame({"text": list("abcdef"), "label": list("xyxyxy"),
                        "split": ["train", "train", "Validation", "test", "test", "train"]}), path)
    assert load_labeled(path, split="train")[0] == ["a", "b", "f"]
    assert load_labeled(path, split="valid")[0] == ["c"]  # the usual spellings of a split name are accepted
    assert load_labeled(path)[0] == list("abcdef")
    with pytest.raises(UserError) as e:
        load_labeled(path, split="holdout")
    assert "'test'" in message(e) and "'train'" in message(e)


def test_split_is_ignored_without_a_split_column(tmp_path):
    path = tmp_path / "data.csv"
    write(sample(), path)
    assert load_labeled(path, split="test")[0] == TEXTS


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_label_lists_become_multi_label_strings(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    write(pd.DataFrame({"text": ["a", "b"], "label": [["x", "y"], ["y"]]}), path)
    assert load_labeled(path)[1] == ["x|y", "y"]


def test_without_zstandard_every_other_format_reads_and_zst_says_what_to_install(tmp_path):
    """A minimal image without zstandard (as on some GPU machines): the package still imports and reads the rest;
    `txl` on a .zst file is a one-line error naming the package, not a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pd.DataFrame({"text": ["a b", "c d"], "label": ["x", "y"]}).to_csv(tmp_path / "t.csv.xz", index=False)
    (tmp_path / "t.csv.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    script = ("import sys; sys.modules['zstandard'] = None\n"  # what `import zstandard` meets where it is missing
              "from pipelines.data.tables import read_table\n"
              f"print(len(read_table({str(tmp_path / 't.csv.xz')!r})))\n"
              "from pipelines.cli import main\n"
              f"sys.exit(main(['train', '--train', {str(tmp_path / 't.csv.zst')!r}, '--out', {str(tmp_path / 'm')!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert done.stdout.split() == ["2"] and done.returncode == 2, done.stderr
    assert "needs the package 'zstandard'" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

"""Issue 6's bad-input corpus on the app's side: every upload is made here and must give documents or one friendly
line naming the file (never a traceback); a damaged model directory is an error box; uploads stay in memory.
The command line's side is tests/test_bad_inputs.py; docs/RELIABILITY.md is the table of both."""
from __future__ import annotations

import builtins
import codecs
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.extract import MAX_UPLOAD_BYTES, ExtractError, extract_documents
from tests.test_bad_inputs import BAD_MODELS, GARBAGE, _damage
from tests.test_extract import IMAGE_PAGE, TEXT_PDF, encrypted, make_docx, make_pdf, zip_of
from tests.tiny_model import make_model_dir

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")

REFUSED_UPLOADS = {
    "empty_file": ("a.txt", b"", "the document is empty"),
    "whitespace_only": ("a.txt", b" \n\t\r\n ", "the document is empty"),
    "html_without_visible_text": ("a.html", b"<script>x()</script><p> </p>", "no visible text"),
    "binary_garbage_txt": ("a.txt", GARBAGE, "looks like a binary file"),
    "binary_garbage_csv": ("a.csv", GARBAGE, "looks like a binary file"),
    "pdf_without_text_layer": ("a.pdf", make_pdf([IMAGE_PAGE]), "no text layer"),
    "pdf_encrypted": ("a.pdf", encrypted(TEXT_PDF, user_password="secret"), "password-protected"),
    "pdf_truncated": ("a.pdf", TEXT_PDF[: len(TEXT_PDF) // 2], "truncated or damaged"),
    "docx_not_a_zip": ("a.docx", b"this is not a zip at all", "not a zip archive"),
    "docx_zip_bomb": ("a.docx", zip_of("word/document.xml", 4 * 2**20), "possible zip bomb"),
    "docx_truncated": ("a.docx", make_docx()[:3000], "not a valid .docx"),
    "csv_duplicated_header": ("a.csv", b"text,text\na,b\n", "repeats the column(s) 'text'"),
    "csv_ragged_long_row": ("a.csv", b"text,id\na,1\nb,2,3\n", "expected 2 fields in line 3, saw 3"),
    "csv_header_only": ("a.csv", b"text,label\n", "no data rows"),
    "csv_semicolons": ("a.csv", b"id;text\n1;hello there\n", "separated by semicolons"),
    "tsv_with_commas": ("a.tsv", b"text,label\nhello,x\n", "name it .csv"),
    "utf16_without_bom": ("a.csv", "text\nhello\n".encode("utf-16-le"), "looks like a binary file"),
    "csv_only_empty_and_nan_cells": ("a.csv", b"text,id\n,1\n  ,2\n", "no column holds text"),
    "jsonl_not_objects": ("a.jsonl", b"[1, 2]\n", "line 1 is an array, not an object"),
    "jsonl_bad_line": ("a.jsonl", b'{"text": "a"}\n{"text": \n', "line 2 is not valid JSON"),
    "unsupported_extension": ("a.exe", b"MZ\x90\x00", "cannot read .exe"),
}


def _error(name: str, data: bytes, **kwargs) -> str:
    with pytest.raises(ExtractError) as caught:
        extract_documents(name, data, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and name in message
    return message


@pytest.mark.parametrize("case", REFUSED_UPLOADS)
def test_refused_upload_is_one_friendly_line(case):
    name, data, phrase = REFUSED_UPLOADS[case]
    assert phrase.lower() in _error(name, data).lower()


def test_csv_missing_or_misspelled_column_lists_the_columns():
    message = _error("a.csv", b"txet,id\nhello,1\n", text_column="text")
    assert "no column 'text'" in message and "'txet'" in message


# (name, bytes, the documents' texts, a phrase of the warning or None)
READ_UPLOADS = {
    "latin1": ("a.txt", "Café crème".encode("latin-1"), ["Café crème"], "not valid UTF-8"),
    "csv_windows_1252": ("a.csv", "text\n“Café” €5\n".encode("cp1252"), ["“Café” €5"],
                         "read 4 byte(s) as Windows-1252"),
    "csv_utf16": ("a.csv", "text,id\nhéllo,1\n".encode("utf-16"), ["héllo"], None),
    "invalid_utf8_mixed": ("a.txt", "naïve ".encode() + b"\xe9t\xe9", ["naïve été"], "Windows-1252"),
    "utf8_bom": ("a.txt", codecs.BOM_UTF8 + b"hello", ["hello"], None),
    "csv_bom": ("a.csv", codecs.BOM_UTF8 + b"text,id\nhello,1\n", ["hello"], None),
    "csv_nan_and_empty_cells": ("a.csv", b"text,id\nNaN,1\n,2\nhello,3\n", ["NaN", "hello"], "skipped 1 rows"),
    "csv_ragged_short_row": ("a.csv", b"text,id\na,1\nb\n", ["a", "b"], None),
}


@pytest.mark.parametrize("case", READ_UPLOADS)
def test_odd_but_readable_upload_gives_its_documents(case):
    name, data, texts, warning = READ_UPLOADS[case]
    result = extract_documents(name, data)
    assert [d.text for d in result.documents] == texts
    assert (warning is None and not result.warnings) or any(warning in w for w in result.warnings), result.warnings


def test_fifty_mb_single_line_is_one_document_and_one_byte_more_is_refused():
    line = (b"word " * (MAX_UPLOAD_BYTES // 5))[:MAX_UPLOAD_BYTES]
    started = time.perf_counter()
    result = extract_documents("big.txt", line)
    assert [len(d.text) for d in result.documents] == [MAX_UPLOAD_BYTES - 1]  # the trailing space is stripped
    assert time.perf_counter() - started < 30
    assert "over the 50 MB upload limit" in _error("big.txt", line + b"x")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "m")


def _start(monkeypatch, model: Path) -> AppTest:
    monkeypatch.setenv("TXL_MODEL", str(model))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    return at


def test_app_shows_one_warning_per_bad_file_and_classifies_the_good_one(monkeypatch, model):
    picks = ["binary_garbage_csv", "pdf_encrypted", "docx_zip_bomb", "csv_duplicated_header", "empty_file"]
    files = [(f"{case}{Path(REFUSED_UPLOADS[case][0]).suffix}", REFUSED_UPLOADS[case][1], "application/octet-stream")
             for case in picks]
    files.append(("good.txt", "Café: the team won the cup".encode("latin-1"), "text/plain"))
    at = _start(monkeypatch, model)
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    for case in picks:
        assert sum(w.startswith(case) for w in warnings) == 1, warnings
    assert any("good.txt" in w and "UTF-8" in w for w in warnings)  # the stated Latin-1 fallback
    assert at.subheader[0].value.startswith("good.txt")


@pytest.mark.parametrize("case", ["truncated_weights", "corrupted_weights_data", "config_a_list",
                                  "config_other_width", "missing_tokenizer"])
def test_app_says_why_a_damaged_model_cannot_be_used(monkeypatch, model, tmp_path, case):
    how, phrase = BAD_MODELS[case]
    at = _start(monkeypatch, _damage(model, tmp_path, how))
    assert not at.exception, at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("Cannot use this model")
    assert phrase.lower() in at.error[0].value.lower()


def test_uploads_are_never_written_outside_a_temporary_directory(monkeypatch, model, tmp_path):
    """Every file the app opens for writing while it reads and classifies uploads must lie in the temporary
    directory; the working directory stays empty. (Streamlit keeps uploads in memory; this keeps it so.)"""
    temp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    temp.mkdir(), cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.chdir(cwd)
    written: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not isinstance(file, int):
            written.append(os.path.abspath(file))
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            written.append(os.path.abspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    at = _start(monkeypatch, model)
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    files = [("../../escape.txt", b"the minister lost the vote", "text/plain"),
             ("doc.pdf", make_pdf([b"BT /F1 12 Tf 72 720 Td (the team won) Tj ET"]), "application/pdf"),
             ("d.docx", make_docx(), "application/octet-stream"),
             ("t.csv", b"text\nchips and code\n", "text/csv")]
    at.file_uploader(key="uploads").set_value(files).run()
    monkeypatch.undo()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == 4  # every upload was read and classified
    assert all(Path(p).is_relative_to(temp) for p in written), written
    assert list(cwd.iterdir()) == [] and not (tmp_path / "escape.txt").exists()

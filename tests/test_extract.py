"""app.extract: every fixture is built here, in memory; no binary is committed."""
from __future__ import annotations

import codecs
import io
import json
import random
import zipfile

import docx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from app.extract import (
    MAX_UPLOAD_BYTES,
    SUPPORTED_SUFFIXES,
    UPLOAD_LIMIT_ENV,
    Document,
    ExtractError,
    check_zip,
    extract_documents,
    max_upload_bytes,
)


def make_pdf(contents: list[bytes]) -> bytes:
    """A minimal valid PDF, one page per content stream, Helvetica as /F1; the xref offsets are computed."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(contents)))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {len(contents)} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, content in enumerate(contents):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                       f">> /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def text_page(text: str) -> bytes:
    return b"BT /F1 12 Tf 72 720 Td (%s) Tj ET" % text.encode("latin-1")


IMAGE_PAGE = b"q 100 0 0 100 72 600 cm BI /W 2 /H 2 /CS /G /BPC 8 ID \x00\xff\xff\x00 EI Q"
TEXT_PDF = make_pdf([text_page("Hello PDF world"), text_page("Second page")])


def encrypted(pdf: bytes, *, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_paragraph("Quarterly report")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([["Region", "Revenue"], ["North", "1200"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    table.cell(0, 0).merge(table.cell(0, 1)).text = "Header spanning two columns"
    document.add_paragraph("Closing remarks")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_of(member: str, size: int) -> bytes:
    """A zip holding `size` zero bytes, written in 1 MB chunks so that memory stays low."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(member, "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return out.getvalue()


def parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


def error(name: str, data: bytes, **kwargs) -> str:
    with pytest.raises(ExtractError) as caught:
        extract_documents(name, data, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message == message.strip()
    return message


def single(name: str, data: bytes, **kwargs) -> tuple[str, list[str]]:
    result = extract_documents(name, data, **kwargs)
    assert len(result.documents) == 1 and result.documents[0].name == name
    return result.documents[0].text, result.warnings


# --- PDF ---------------------------------------------------------------------------------------------------

def test_pdf_text_layer_pages_joined_by_blank_line():
    assert [p.extract_text() for p in PdfReader(io.BytesIO(TEXT_PDF), strict=True).pages] == \
        ["Hello PDF world", "Second page"]  # the hand-built fixture is a real PDF
    assert single("a.pdf", TEXT_PDF) == ("Hello PDF world\n\nSecond page", [])


def test_pdf_image_only_page_is_skipped_with_a_warning():
    text, warnings = single("a.pdf", make_pdf([IMAGE_PAGE, text_page("Only text")]))
    assert text == "Only text"
    assert warnings == ["a.pdf: skipped 1 of 2 pages without a text layer"]


def test_pdf_without_text_layer_says_ocr_is_not_supported():
    assert "OCR is not supported" in error("scan.pdf", make_pdf([IMAGE_PAGE, IMAGE_PAGE]))


def test_pdf_with_user_password_is_refused_and_empty_password_opens():
    assert "password-protected" in error("a.pdf", encrypted(TEXT_PDF, user_password="secret"))
    assert single("a.pdf", encrypted(TEXT_PDF, user_password=""))[0] == "Hello PDF world\n\nSecond page"


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_pdf(cut):
    assert "truncated or damaged" in error("a.pdf", TEXT_PDF[:int(len(TEXT_PDF) * cut)])


def test_corrupt_pdf_and_non_pdf():
    garbled = TEXT_PDF[:9] + bytes(random.Random(0).randbytes(len(TEXT_PDF) - 30)) + TEXT_PDF[-21:]
    assert "the PDF is damaged" in error("a.pdf", garbled)
    assert "is not a PDF" in error("a.pdf", b"hello, this is text")


# --- DOCX and zip archives --------------------------------------------------------------------------------

def test_docx_paragraphs_and_table_cells_in_order():
    text, warnings = single("r.docx", make_docx())
    assert text.split("\n") == ["Quarterly report", "Header spanning two columns", "North\t1200", "Closing remarks"]
    assert warnings == []


def test_docx_that_is_not_a_zip():
    assert "not a valid .docx (not a zip archive)" in error("r.docx", b"this is plain text, not a zip")


def test_zip_that_is_not_a_word_document():
    assert "not a valid .docx" in error("r.docx", zip_of("notes.txt", 2**20))


def test_zip_bomb_docx_is_refused_before_parsing():
    bomb = zip_of("word/document.xml", 300 * 2**20)
    assert len(bomb) < 2 * 2**20
    assert "possible zip bomb" in error("bomb.docx", bomb)
    assert "300 MB" in error("bomb.docx", bomb)


def test_zip_member_with_extreme_ratio_is_refused_even_under_the_size_limit():
    with pytest.raises(ExtractError, match=r"compressed \d+:1, over the 100:1 limit"):
        check_zip("x.docx", zip_of("word/document.xml", 20 * 2**20), kind=".docx")
    check_zip("x.docx", make_docx(), kind=".docx")  # a real document passes, and so does a large photo:
    photo = io.BytesIO()
    with zipfile.ZipFile(photo, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/image1.jpg", random.Random(0).randbytes(3 * 2**20))
    check_zip("x.docx", photo.getvalue(), kind=".docx")


def test_unpacked_limit_is_a_parameter():
    assert "unpacks to" in error("r.docx", make_docx(), max_unpacked_bytes=1000)


# --- plain text and HTML ----------------------------------------------------------------------------------

def test_html_visible_text_only():
    html = ("<html><head><title>T</title><style>p {color: red}</style><script>var x = '<p>no</p>';</script>"
            "</head><body><h1>Title &amp; more</h1><p>First   paragraph\nwraps</p><div>caf&eacute;<br>next"
            "</div><table><tr><td>a</td><td>b</td></tr></table><template><p>hidden</p></template>"
            "<pre>x = 1\n    y</pre></body></html>")
    text, _ = single("page.html", html.encode())
    assert text == "T\n\nTitle & more\n\nFirst paragraph wraps\n\ncafé\nnext\n\na b\n\nx = 1\ny"


def test_windows_1252_is_decoded_with_a_warning():
    text, warnings = single("a.txt", "Caf\u00e9 na\u00efve \u20ac5".encode("cp1252"))
    assert text == "Caf\u00e9 na\u00efve \u20ac5"
    assert len(warnings) == 1 and "read 3 byte(s) as Windows-1252" in warnings[0]
    assert single("a.txt", b"\x81 abc def ghi")[0] == "\x81 abc def ghi"  # undefined in cp1252: Latin-1, never rejected


def test_bom_is_stripped_and_newlines_normalised():
    assert single("a.md", codecs.BOM_UTF8 + "# Titel\r\nübung".encode()) == ("# Titel\nübung", [])
    assert single("a.txt", "héllo".encode("utf-16"))[0] == "héllo"


def test_binary_garbage_with_a_text_extension():
    garbage = random.Random(0).randbytes(4096)
    assert "looks like a binary file, not text" in error("a.txt", garbage)
    assert "zip archive" in error("a.txt", make_docx())
    assert "looks like a binary file" in error("a.csv", b"text\n" + bytes(100))


@pytest.mark.parametrize("name", ["a.txt", "a.pdf", "a.docx", "a.csv", "a.parquet"])
@pytest.mark.parametrize("data", [b"", b" \n\t\r\n "])
def test_empty_documents(name, data):
    assert "the document is empty" in error(name, data)


def test_html_with_no_visible_text_is_empty():
    assert "the document is empty" in error("a.html", b"<script>alert(1)</script><p> </p>")


def test_oversize_upload_names_the_limit_and_how_to_raise_it():
    message = error("big.txt", b"x" * (3 * 2**20 + 1), max_bytes=3 * 2**20)
    assert "over the 3 MB upload limit" in message and UPLOAD_LIMIT_ENV in message


def test_max_upload_bytes_reads_the_environment():
    assert max_upload_bytes({}) == MAX_UPLOAD_BYTES
    assert max_upload_bytes({UPLOAD_LIMIT_ENV: "120"}) == 120 * 2**20
    for bad in ("0", "-5", "lots", "nan", "inf"):
        with pytest.raises(ExtractError, match=UPLOAD_LIMIT_ENV):
            max_upload_bytes({UPLOAD_LIMIT_ENV: bad})


def test_unsupported_extension_lists_the_supported_ones():
    message = error("a.exe", b"MZ")
    assert all(suffix in message for suffix in SUPPORTED_SUFFIXES)
    assert "files without an extension" in error("README", b"text")


# --- tables -----------------------------------------------------------------------------------------------

CSV = b"id,title,body,label\n1,Short,A much longer body of text,x\n2,Tiny,\"Another, longer body\",y\n3,T,,z\n"


def test_csv_default_column_by_name_and_empty_cells_skipped():
    result = extract_documents("d.csv", CSV)
    assert result.text_column == "body"
    assert result.columns == ["title", "body", "label"]  # id is numeric: not offered
    assert result.documents == [Document("d.csv#1", "A much longer body of text"),
                                Document("d.csv#2", "Another, longer body")]
    assert result.warnings == ["d.csv: skipped 1 rows with an empty 'body' cell"]


def test_csv_chosen_column_and_longest_mean_default():
    assert [d.text for d in extract_documents("d.csv", CSV, text_column="title").documents] == ["Short", "Tiny", "T"]
    assert extract_documents("d.csv", b"Text,summary\nshort,a much longer summary\n").text_column == "Text"
    unnamed = b"k,summary,abstract\n1,ab,a long abstract here\n2,cd,another long one\n"
    assert extract_documents("d.csv", unnamed).text_column == "abstract"


def test_csv_missing_column_lists_the_columns():
    message = error("d.csv", CSV, text_column="article")
    assert "no column 'article'" in message and "'id', 'title', 'body', 'label'" in message


def test_csv_duplicated_header():
    assert "repeats the column(s) 'text'" in error("d.csv", b"text,text\na,b\n")


def test_csv_header_only_and_unparseable():
    assert "d.csv has a header but no data rows" in error("d.csv", b"text,label\n")
    assert "Expected 2 fields in line 3, saw 4" in error("d.csv", b"text,label\na,b\nc,d,e,f\n")


@pytest.mark.parametrize("name, sep, refused", [
    ("d.csv", ",", None), ("d.tsv", "\t", None), ("d.csv", ";", "separated by semicolons"),
    ("d.csv", "\t", "name it .tsv"), ("d.tsv", ",", "name it .csv")])
def test_delimiter_comes_from_the_name(name, sep, refused):
    """As for `txl`: .csv has commas, .tsv tabs; another delimiter is named in the error, never guessed."""
    rows = [["label", "text"], ["a", "one, two; three"], ["b", "four, five"]]
    data = "\n".join(sep.join(f'"{v}"' if sep in v else v for v in row) for row in rows).encode()
    if refused:
        assert refused in error(name, data)
    else:
        assert [d.text for d in extract_documents(name, data).documents] == ["one, two; three", "four, five"]


def test_jsonl_rows_and_bad_lines():
    lines = [{"text": "first doc", "n": 1}, {"n": 2}, {"text": "third doc", "n": 3}]
    result = extract_documents("d.jsonl", "\n".join(map(json.dumps, lines)).encode() + b"\n\n")
    assert result.documents == [Document("d.jsonl#1", "first doc"), Document("d.jsonl#3", "third doc")]
    assert result.columns == ["text"] and "skipped 1 rows" in result.warnings[0]
    assert "line 2 is not valid JSON" in error("d.jsonl", b'{"text": "a"}\n{"text": \n')
    assert "line 1 is an array, not an object" in error("d.jsonl", b'["a"]\n')


def test_parquet_rows_columns_and_limits():
    frame = pd.DataFrame({"content": ["alpha beta", None, "gamma"], "score": [0.5, 0.1, 0.9]})
    result = extract_documents("d.parquet", parquet(frame))
    assert result.documents == [Document("d.parquet#1", "alpha beta"), Document("d.parquet#3", "gamma")]
    assert result.text_column == "content" and result.columns == ["content"]
    assert "unpacks to" in error("d.parquet", parquet(frame), max_unpacked_bytes=10)
    assert "cannot parse d.parquet as Parquet" in error("d.parquet", b"PAR1 nonsense")


def test_parquet_duplicated_columns():
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])
    out = io.BytesIO()
    pq.write_table(table, out)
    assert "repeats the column(s) 'text'" in error("d.parquet", out.getvalue())


def test_table_without_text_column():
    assert "no column holds text" in error("d.csv", b"a,b\n1,2\n3,4\n")


# --- properties -------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1))
def test_printable_text_round_trips(text):
    if not text.strip():
        return
    assert extract_documents("a.txt", text.encode()).documents == [Document("a.txt", text.strip())]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SUPPORTED_SUFFIXES), st.binary(max_size=300))
def test_arbitrary_bytes_give_documents_or_a_one_line_extract_error(suffix, data):
    try:
        result = extract_documents("f" + suffix, data)
    except ExtractError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert result.documents and all(d.text.strip() for d in result.documents)

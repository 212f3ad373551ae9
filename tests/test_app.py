"""Every flow of the Streamlit app through `streamlit.testing.v1.AppTest`: upload, many documents, pasted
text, a CSV with a chosen column, switching models, and each friendly error."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_extract import IMAGE_PAGE, TEXT_PDF, encrypted, make_pdf, text_page
from tests.tiny_model import make_model_dir

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return make_model_dir(root / "a", card="# Model A\n"), make_model_dir(root / "b", labels=("neg", "pos"), seed=1,
                                                                           card="# Model B\n")


def start(monkeypatch, model) -> AppTest:
    monkeypatch.setenv("TXL_MODEL", str(model))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, *files) -> AppTest:
    at.file_uploader(key="uploads").set_value(list(files)).run()
    assert not at.exception, at.exception
    return at


def test_single_upload_shows_label_chart_and_highlights(monkeypatch, model_dirs):
    at = upload(start(monkeypatch, model_dirs[0]), ("report.txt", b"the team won the match " * 40, "text/plain"))
    heading = at.subheader[0].value
    assert heading.startswith("report.txt") and any(name in heading for name in ("politics", "sport", "tech"))
    probs = at.dataframe[0].value  # the classes' probabilities, in percent, most probable first
    assert list(probs.columns) == ["class", "probability"] and probs["probability"].is_monotonic_decreasing
    assert any("What drove the prediction" in m.value for m in at.markdown)
    bodies = [h.proto.body for h in at.get("html")]
    assert 'href="#part-0"' in bodies[0] and "background:rgba" in bodies[-1]  # the overview, the shaded document
    assert any("most influential" in m.value for m in at.markdown)


def test_many_documents_table_and_download(monkeypatch, model_dirs):
    files = [(f"d{i}.txt", f"document {i} about chips and code".encode(), "text/plain") for i in range(4)]
    at = upload(start(monkeypatch, model_dirs[0]), *files)
    table = at.dataframe[0].value
    assert list(table["document"]) == [f"d{i}.txt" for i in range(4)]
    assert {"label", "score", "tokens"} <= set(table.columns)
    assert at.get("download_button")
    at.selectbox(key="inspect").set_value("3. d2.txt").run()
    assert at.subheader[0].value.startswith("d2.txt")


def test_a_pdf_with_a_text_layer(monkeypatch, model_dirs):
    pdf = make_pdf([text_page("The minister lost the vote"), text_page("Parliament debated the tax law")])
    at = upload(start(monkeypatch, model_dirs[0]), ("speech.pdf", pdf, "application/pdf"))
    assert at.subheader[0].value.startswith("speech.pdf")


def test_pasted_text(monkeypatch, model_dirs):
    at = start(monkeypatch, model_dirs[0])
    at.text_area(key="pasted").input("the minister won the vote in parliament").run()
    assert at.subheader[0].value.startswith("pasted text")


def test_csv_with_a_chosen_column(monkeypatch, model_dirs):
    frame = pd.DataFrame({"title": ["short one", "short two"], "body": ["a long text about the league " * 5,
                                                                          "a long text about the network " * 5]})
    at = upload(start(monkeypatch, model_dirs[0]), ("many.csv", frame.to_csv(index=False).encode(), "text/csv"))
    assert at.selectbox(key="column::many.csv").value == "body"
    assert list(at.dataframe[0].value["document"]) == ["many.csv#1", "many.csv#2"]
    at.selectbox(key="column::many.csv").set_value("title").run()
    assert list(at.dataframe[0].value["characters"]) == [9, 9]


def test_tables_are_read_as_txl_reads_them(monkeypatch, model_dirs):
    """Windows-1252 bytes are read with txl's one warning; a .csv separated by semicolons is refused with
    txl's message, not guessed; the text column is picked by txl's rule (the longest text, not the id)."""
    latin = "ref,abstract\nA1,caf\u00e9 \u20ac5 and a long text about the league\nA2,na\u00efve network news\n"
    at = upload(start(monkeypatch, model_dirs[0]), ("latin.csv", latin.encode("cp1252"), "text/csv"),
                ("semi.csv", b"text;label\nhello;x\n", "text/csv"))
    warnings = [w.value for w in at.warning]
    assert any("read 3 byte(s) as Windows-1252" in w for w in warnings), warnings
    assert any(w.startswith("semi.csv parsed to a single column") and "semicolons" in w for w in warnings), warnings
    assert at.selectbox(key="column::latin.csv").value == "abstract"
    table = at.dataframe[0].value  # the refused file is a row too, with its problem
    assert list(table["document"]) == ["latin.csv#1", "latin.csv#2", "semi.csv"]
    assert "semicolons" in table["problem"].iloc[2]


def test_switching_models(monkeypatch, model_dirs):
    monkeypatch.setenv("TXL_MODELS_DIR", str(model_dirs[1].parent))  # txl app --models-dir
    at = start(monkeypatch, model_dirs[0])
    assert any("Model A" in m.value for m in at.markdown)
    assert at.selectbox(key="model_choice").options[0] == "a (--model)"
    assert "Other directory…" not in at.selectbox(key="model_choice").options  # no free server paths
    at.selectbox(key="model_choice").set_value("b").run()
    assert any("Model B" in m.value for m in at.markdown)
    at.text_area(key="pasted").input("fine film").run()
    assert any(label in at.subheader[0].value for label in ("neg", "pos"))


def test_model_page_shows_labels_metrics_confusion(monkeypatch, model_dirs):
    at = start(monkeypatch, model_dirs[0])
    assert any("politics, sport, tech" in m.value for m in at.markdown)
    assert any("accuracy 1.0000" in m.value for m in at.markdown)
    assert at.dataframe  # the confusion matrix


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"0" * (250 * 2**20))
    return buf.getvalue()


@pytest.mark.parametrize("name, data, phrase", [
    ("scan.exe", b"MZ\x90\x00", "cannot read"),
    ("empty.txt", b"   \n ", "empty"),
    ("garbage.txt", bytes(range(256)) * 64, "binary"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\n", "pdf"),
    ("notzip.docx", b"this is not a zip", "zip"),
    ("bomb.docx", None, "unpack"),
    ("scan.pdf", make_pdf([IMAGE_PAGE, IMAGE_PAGE]), "ocr is not supported"),
    ("empty.pdf", make_pdf([b""]), "no text layer"),
    ("locked.pdf", encrypted(TEXT_PDF, user_password="secret"), "password"),
])
def test_friendly_error_for_bad_files(monkeypatch, model_dirs, name, data, phrase):
    data = _zip_bomb() if data is None else data
    at = upload(start(monkeypatch, model_dirs[0]), (name, data, "application/octet-stream"))
    messages = " ".join(w.value for w in at.warning).lower()
    assert name.lower() in messages and phrase in messages


def test_oversized_upload_is_refused(monkeypatch, model_dirs):
    monkeypatch.setenv("TXL_MAX_UPLOAD_MB", "0.001")
    at = upload(start(monkeypatch, model_dirs[0]), ("big.txt", b"word " * 1000, "text/plain"))
    assert "upload limit" in " ".join(w.value for w in at.warning)


def test_free_server_paths_only_when_the_operator_allows_them(monkeypatch, model_dirs):
    monkeypatch.setenv("TXL_ANY_MODEL_PATH", "1")  # txl app --any-model-path
    at = start(monkeypatch, model_dirs[0])
    at.selectbox(key="model_choice").set_value("Other directory…").run()
    at.text_input(key="model_path").input(str(model_dirs[1])).run()
    assert any("Model B" in m.value for m in at.markdown)


def test_the_landing_page_names_the_labels_before_any_upload(monkeypatch, model_dirs):
    at = start(monkeypatch, model_dirs[0])
    assert any("`politics`, `sport`, `tech`" in m.value for m in at.markdown)
    assert at.button(key="classify")


def test_a_directory_that_is_not_a_model(monkeypatch, tmp_path):
    at = start(monkeypatch, tmp_path)
    assert "not a classifier model directory" in at.error[0].value


def test_bundled_default_model_classifies_the_examples(monkeypatch):
    monkeypatch.delenv("TXL_MODEL", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert at.selectbox(key="model_choice").value == "bbc_news"
    assert any("TF-IDF word n-grams and" in c.value and "character n-grams" in c.value for c in at.caption)
    labels = ["business", "entertainment", "politics", "sport", "tech"]
    assert [b.label for b in at.button if b.key.startswith("example::")] == labels  # one example per label
    for label in labels:
        at.button(key=f"example::{label}").click().run()
        assert not at.exception, at.exception
        assert at.subheader[0].value.startswith(f"example of {label}: **{label}**"), at.subheader[0].value
        assert not at.warning  # the examples are typical: no low-confidence notice
        # the bundled model fuses n-grams: each part's label and the n-grams behind the prediction are shown
        assert any("Encoder and n-grams" in m.value for m in at.markdown)
        terms = [d.value for d in at.dataframe if list(d.value.columns) == ["n-gram", "contribution"]]
        assert len(terms) == 1 and len(terms[0]) > 0 and (terms[0]["contribution"] > 0).all()


def test_bundled_model_gives_foreign_text_the_low_confidence_notice(monkeypatch):
    monkeypatch.delenv("TXL_MODEL", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert any("low-confidence notice" in m.value for m in at.markdown)  # the landing page says it exists
    at.text_area(key="pasted").input("Le gouvernement a présenté mercredi un projet de loi sur les retraites qui "
                                     "repousse l'âge légal de départ, provoquant la colère des syndicats.").run()
    notice = at.warning[0].value
    assert "Low confidence" in notice and "of its words are in the model's vocabulary" in notice


def test_failed_files_are_rows_of_the_table_and_the_download_can_hold_the_top_parts(monkeypatch, model_dirs):
    files = [("good.txt", b"the team won the match " * 30, "text/plain"),
             ("bad.pdf", b"%PDF-1.4 broken", "application/pdf")]
    at = upload(start(monkeypatch, model_dirs[0]), *files)
    table = at.dataframe[0].value
    assert list(table["document"]) == ["good.txt", "bad.pdf"] and table["problem"].iloc[1]
    at.button(key="explain_all").click().run()
    assert not at.exception, at.exception
    assert "top parts" in at.get("download_button")[0].proto.label

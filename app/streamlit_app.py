"""The web app: upload or paste documents, see the predicted class, its probabilities and which segments
drove it; inspect the model. A view only: every number comes from `pipelines.model.inference`, the same code as
`txl classify`.

Run with `txl app` (or `streamlit run app/streamlit_app.py -- --model DIR`).
"""
from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from app.extract import Document, ExtractError, extract_documents, max_upload_bytes
from pipelines.errors import UserError
from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import load_model_dir

BUNDLED = Path(__file__).parent / "models"
EXAMPLES = Path(__file__).parent / "examples"
MAX_RENDER_CHARS = 200_000  # the highlighted view shows at most this much of a document


def bundled_models() -> dict[str, Path]:
    return {p.name: p for p in sorted(BUNDLED.iterdir()) if (p / "config.json").is_file()} if BUNDLED.is_dir() else {}


@st.cache_resource(show_spinner="Loading the model…")
def load_model(path: str):
    """Loaded once per model directory and shared by every session (inference only reads it)."""
    return prepare(load_model_dir(path), precision=os.environ.get("TXL_PRECISION", "auto"))


def model_picker_ui(default: str | None) -> str | None:
    """Sidebar: a bundled model or any directory path; returns the chosen directory."""
    models = bundled_models()
    st.sidebar.header("Model")
    options = list(models) + ["Other directory…"]
    start = 0
    if default and Path(default).resolve() not in [p.resolve() for p in models.values()]:
        start = len(options) - 1
    choice = st.sidebar.selectbox("Model", options, index=start, key="model_choice")
    if choice == "Other directory…":
        path = st.sidebar.text_input("Model directory", value=default or "", key="model_path").strip()
        return path or None
    return str(models[choice])


def input_ui() -> tuple[list[Document], list[str]]:
    """Uploads, pasted text and examples; returns the documents and the problems to show."""
    limit = max_upload_bytes()
    files = st.file_uploader("Upload documents (.txt .md .html .pdf .docx, or .csv .tsv .jsonl .parquet with many)",
                             accept_multiple_files=True, key="uploads")
    pasted = st.text_area("…or paste a document", height=150, key="pasted")
    docs, problems = [], []
    for f in files or []:
        docs += _documents_of(f.name, f.getvalue(), limit, problems)
    if pasted.strip():
        docs.append(Document("pasted text", pasted.strip()))
    if not docs and EXAMPLES.is_dir():
        examples = sorted(p.name for p in EXAMPLES.glob("*.txt"))
        pick = st.selectbox("…or try an example", ["(none)"] + examples, key="example")
        if pick != "(none)":
            docs.append(Document(pick, (EXAMPLES / pick).read_text(encoding="utf-8")))
    return docs, problems


def _documents_of(name: str, data: bytes, limit: int, problems: list[str]) -> list[Document]:
    try:
        first = extract_documents(name, data, max_bytes=limit)
        if len(first.columns) > 1:
            column = st.selectbox(f"Text column of {name}", first.columns,
                                  index=first.columns.index(first.text_column), key=f"column::{name}")
            if column != first.text_column:
                first = extract_documents(name, data, text_column=column, max_bytes=limit)
    except ExtractError as e:
        problems.append(str(e))
        return []
    problems += [w if w.startswith(name) else f"{name}: {w}" for w in first.warnings]
    return first.documents


def classify_ui(md, docs: list[Document]):
    """Classify with a progress bar; returns the predictions."""
    bar = st.progress(0.0, text=f"Classifying {len(docs)} document(s)…")
    done = [0]

    def step(n: int):
        done[0] += n
        bar.progress(min(1.0, done[0] / len(docs)), text=f"Classified {done[0]} of {len(docs)}")

    preds = predict(md, [d.text for d in docs], explain=True, progress=step)
    bar.empty()
    return preds


def results_table(docs, preds) -> pd.DataFrame:
    return pd.DataFrame({"document": [d.name for d in docs], "label": [p.label or "—" for p in preds],
                         "score": [round(p.score, 4) for p in preds], "tokens": [p.n_tokens for p in preds],
                         "characters": [len(d.text) for d in docs], "problem": [p.error for p in preds]})


def many_results_ui(docs, preds) -> int:
    """Results table with a CSV download; returns the index of the document to inspect."""
    table = results_table(docs, preds)
    st.dataframe(table, use_container_width=True, hide_index=True)
    st.download_button("Download results as CSV", table.to_csv(index=False).encode(), "predictions.csv",
                       "text/csv", key="download")
    names = [f"{i + 1}. {d.name}" for i, d in enumerate(docs)]
    return names.index(st.selectbox("Inspect a document", names, key="inspect"))


def single_result_ui(doc: Document, pred) -> None:
    if pred.error:
        st.warning(f"{doc.name}: {pred.error}; nothing to classify.")
        return
    st.subheader(f"{doc.name}: **{pred.label or '(no label)'}** ({pred.score:.1%})")
    probs = pd.DataFrame({"probability": pred.probs}).sort_values("probability", ascending=False)
    st.bar_chart(probs, horizontal=True)
    st.caption(f"{pred.n_tokens:,} tokens read in {len(pred.segments)} segment(s), all of them, with memory.")
    st.markdown("**What drove the prediction**: each segment's share of the predicted class's score "
                "(green pushes toward it, red away).")
    st.html(highlight_html(doc.text, pred.segments))
    if pred.encoder_label:
        ngram_ui(pred)


def ngram_ui(pred) -> None:
    """A model with an n-gram component: what each part alone says, and the n-grams that pushed the label."""
    agree = "agree" if pred.encoder_label == pred.ngram_label else "disagree"
    st.markdown(f"**Encoder and n-grams {agree}**: the Transformer-XL encoder alone says *{pred.encoder_label}*, "
                f"the TF-IDF n-gram model alone *{pred.ngram_label}*; the prediction fuses both.")
    if pred.terms:
        st.markdown("**Words and phrases that pushed toward it** (their part of the fused score):")
        st.dataframe(pd.DataFrame(pred.terms, columns=["n-gram", "contribution"]).round(4),
                     hide_index=True)


def highlight_html(text: str, segments) -> str:
    """The document with each segment's background shaded by its contribution."""
    peak = max((abs(s.contribution) for s in segments), default=1.0) or 1.0
    parts, shown = [], 0
    for s in segments:
        if shown >= MAX_RENDER_CHARS:
            parts.append("<p><em>… (the rest of the document is not shown)</em></p>")
            break
        alpha = 0.55 * abs(s.contribution) / peak
        color = f"rgba(34,160,80,{alpha:.2f})" if s.contribution >= 0 else f"rgba(210,50,50,{alpha:.2f})"
        chunk = text[s.char_start:s.char_end]
        shown += len(chunk)
        tip = f"tokens {s.start}-{s.end}: contribution {s.contribution:+.3f} ({s.share:.0%})"
        parts.append(f'<span title="{tip}" style="background:{color}">{html.escape(chunk)}</span>')
    body = " ".join(parts)
    return f'<div style="white-space:pre-wrap;font-family:sans-serif;line-height:1.5;max-height:480px;overflow:auto">{body}</div>'


def model_page_ui(md) -> None:
    cfg = md.model.config
    st.markdown(md.card or "_This model has no model card._")
    st.markdown(f"**Labels** ({len(md.labels)}{', multi-label' if md.multi_label else ''}): " + ", ".join(md.labels))
    n = None if md.ngram is None else (md.ngram.n_word_terms, len(md.ngram.terms) - md.ngram.n_word_terms)
    fused = "" if n is None else f"; fused with {n[0]:,} TF-IDF word n-grams" + (
        f" and {n[1]:,} character n-grams" if n[1] else "")
    st.caption(f"d_model {cfg.d_model}, {cfg.n_layer} layers, {cfg.n_head} heads, segment {cfg.segment_len}, "
               f"memory {cfg.mem_len}, pooling {cfg.pooling}, vocabulary {cfg.vocab_size:,}; precision {md.precision}"
               + fused)
    for split, m in md.metrics.items():
        if "accuracy" not in m:
            continue
        st.markdown(f"**{split}**: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {m['n_documents']} documents")
        if "confusion_matrix" in m:
            cm = pd.DataFrame(m["confusion_matrix"], index=m["labels"], columns=m["labels"])
            st.dataframe(cm.style.background_gradient(cmap="Blues"), use_container_width=True)


def main(argv: list[str] | None = None) -> None:
    st.set_page_config(page_title="Long-document classifier (Transformer-XL)", layout="wide")
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    st.title("Long-document classifier")
    st.caption("Transformer-XL reads every document whole, segment by segment, with memory. Nothing is truncated.")
    path = model_picker_ui(args.model or os.environ.get("TXL_MODEL"))
    if not path:
        st.info("Choose a model in the sidebar.")
        return
    try:
        md = load_model(path)
    except UserError as e:
        st.error(f"Cannot use this model: {e}")
        return
    classify_tab, model_tab = st.tabs(["Classify", "Model"])
    with model_tab:
        model_page_ui(md)
    with classify_tab:
        docs, problems = input_ui()
        for p in problems:
            st.warning(p)
        if not docs:
            return
        preds = classify_ui(md, docs)
        pick = 0 if len(docs) == 1 else many_results_ui(docs, preds)
        single_result_ui(docs[pick], preds[pick])


if __name__ == "__main__":
    main()

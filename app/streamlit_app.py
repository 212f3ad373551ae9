"""The web app: upload or paste documents, see the predicted class, its probabilities and which segments
drove it; inspect the model. A view only: every number comes from `pipelines.model.inference`, the same code as
`txl classify`.

Run with `txl app` (or `streamlit run app/streamlit_app.py -- --model DIR`).
"""
from __future__ import annotations

import argparse
import hashlib
import html
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from app.extract import Document, ExtractError, extract_documents, max_upload_bytes
from pipelines.errors import UserError
from pipelines.data.writers import escape_formulas
from pipelines.model.explain import explain, explanation
from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import load_model_dir

BUNDLED = Path(__file__).parent / "models"
MAX_RENDER_CHARS = 200_000  # the highlighted view shows at most this much of a document


def bundled_models() -> dict[str, Path]:
    return {p.name: p for p in sorted(BUNDLED.iterdir()) if (p / "config.json").is_file()} if BUNDLED.is_dir() else {}


@st.cache_resource(show_spinner="Loading the model…")
def load_model(path: str):
    """Loaded once per model directory and shared by every session (inference only reads it)."""
    return prepare(load_model_dir(path), precision=os.environ.get("TXL_PRECISION", "auto"))


def available_models(default: str | None) -> dict[str, Path]:
    """The models a visitor may pick: the one the operator started the app with (`txl app --model`), the bundled
    ones, and those under the operator's `txl app --models-dir` (TXL_MODELS_DIR)."""
    models = {f"{Path(default).name} (--model)": Path(default)} if default else {}
    root = os.environ.get("TXL_MODELS_DIR")
    under = sorted(p for p in Path(root).iterdir() if (p / "config.json").is_file()) if root and Path(root).is_dir() \
        else []
    for p in [*bundled_models().values(), *under]:
        if p.resolve() not in {m.resolve() for m in models.values()}:
            models[p.name if p.name not in models else f"{p.name} ({p.parent})"] = p
    return models


def model_picker_ui(default: str | None) -> str | None:
    """Sidebar: one of `available_models`; a free server path only when the operator allows it
    (`txl app --any-model-path`): on a shared host a visitor could otherwise probe the server's files."""
    models = available_models(default)
    st.sidebar.header("Model")
    options = list(models) + (["Other directory…"] if os.environ.get("TXL_ANY_MODEL_PATH") == "1" else [])
    if not options:
        return None
    choice = st.sidebar.selectbox("Model", options, index=0, key="model_choice")
    if choice == "Other directory…":
        path = st.sidebar.text_input("Model directory", value=default or "", key="model_path").strip()
        return path or None
    return str(models[choice])


def input_ui(md) -> tuple[list[Document], list[str], dict[str, str]]:
    """Uploads, pasted text and the model's examples; returns the documents, the problems to show and the files
    that could not be read ({name: why})."""
    limit = max_upload_bytes()
    files = st.file_uploader("Upload documents (.txt .md .html .pdf .docx, or .csv .tsv .jsonl .parquet with many)",
                             accept_multiple_files=True, key="uploads")
    examples_ui(md)
    pasted = st.text_area("…or paste a document", height=150, key="pasted")
    st.button("Classify", key="classify", type="primary")  # a click applies the pasted text (so does Ctrl+Enter)
    docs, problems, failed = [], [], {}
    for f in files or []:
        docs += _documents_of(f.name, f.getvalue(), limit, problems, failed)
    if pasted.strip():
        docs.append(Document(st.session_state.get("pasted_name", "pasted text") if pasted == st.session_state.get(
            "example_text") else "pasted text", pasted.strip()))
    return docs, problems, failed


def examples_ui(md) -> None:
    """One button per label that has an example (the model's examples.json): a click puts it in the text box."""
    if not md.examples:
        return

    def use(label: str) -> None:
        st.session_state.update(pasted=md.examples[label], example_text=md.examples[label],
                                pasted_name=f"example of {label}")

    st.markdown("**…or try an example**, one per label:")
    shown = list(md.examples)[:12]
    for column, label in zip(st.columns(len(shown)), shown):
        column.button(label, key=f"example::{label}", on_click=use, args=(label,), use_container_width=True)


def _documents_of(name: str, data: bytes, limit: int, problems: list[str], failed: dict[str, str]) -> list[Document]:
    try:
        first = extract_documents(name, data, max_bytes=limit)
        if len(first.columns) > 1:
            column = st.selectbox(f"Text column of {name}", first.columns,
                                  index=first.columns.index(first.text_column), key=f"column::{name}")
            if column != first.text_column:
                first = extract_documents(name, data, text_column=column, max_bytes=limit)
    except ExtractError as e:
        problems.append(str(e))
        failed[name] = str(e)
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

    preds = predict(md, [d.text for d in docs], progress=step)
    bar.empty()
    return preds


def landing_ui(md) -> None:
    """What the model does, before anything is uploaded."""
    kind = "tags each document with any of its" if md.multi_label else "sorts each document into one of its"
    shown = ", ".join(f"`{x}`" for x in md.labels[:50]) + (f" and {len(md.labels) - 50:,} more (see the Model tab)"
                                                          if len(md.labels) > 50 else "")
    st.markdown(f"This model {kind} **{len(md.labels)} classes**: {shown}. Documents of any length are read "
                "whole; nothing is cut off. It knows only these classes: a document about something else still "
                "gets one of them" + (", with a low-confidence notice when it looks unlike the documents the model "
                                      "was checked on." if md.confidence is not None else "."))


def results_table(docs, preds, labels: list[str], failed: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per document, then one per file that could not be read (its problem said, no label)."""
    table = pd.DataFrame({"document": [d.name for d in docs], "label": [p.label or "—" for p in preds],
                          "score": [round(p.score, 4) for p in preds], "notice": [p.notice for p in preds],
                          "tokens": [p.n_tokens for p in preds], "characters": [len(d.text) for d in docs],
                          "problem": [p.error for p in preds]})
    for name in labels:
        table[f"prob_{name}"] = [round(p.probs.get(name, float("nan")), 4) for p in preds]
    if not failed:
        return table
    rows = pd.DataFrame({"document": list(failed), "label": "—", "problem": list(failed.values())})
    return pd.concat([table, rows], ignore_index=True)


TOP_PARTS = 5  # the explanation column of the download: the most influential parts of each document


def many_results_ui(md, docs, preds, failed: dict[str, str]) -> int:
    """Results table (every class's probability, the files that could not be read) with a CSV download, and the
    top parts of every document on request; returns the index of the document to inspect."""
    table = results_table(docs, preds, md.labels, failed)
    st.dataframe(table, use_container_width=True, hide_index=True)
    key = hashlib.sha1("\0".join([str(md.path), *(d.text for d in docs)]).encode("utf-8", "surrogatepass")).hexdigest()
    done = st.session_state.get("explained_all", {}).get(key)
    if done is None and st.button(f"Add the {TOP_PARTS} most influential parts of every document to the download "
                                  "(each document is read again, part by part)", key="explain_all"):
        bar = st.progress(0.0, text="Explaining every document…")
        done = []
        for i, (d, p) in enumerate(zip(docs, preds)):
            done.append(explanation(md, d.text, TOP_PARTS) if not p.error else "[]")
            bar.progress((i + 1) / len(docs), text=f"Explained {i + 1} of {len(docs)}")
        bar.empty()
        st.session_state["explained_all"] = {key: done}
    if done is not None:
        table["explanation"] = done + [""] * (len(table) - len(done))
    st.download_button("Download results as CSV (every class's probability"
                       + (", the top parts of each document)" if done is not None else ")"),
                       escape_formulas(table).to_csv(index=False).encode(), "predictions.csv", "text/csv",
                       key="download")
    names = [f"{i + 1}. {d.name}" for i, d in enumerate(docs)]
    return names.index(st.selectbox("Inspect a document", names, key="inspect"))


def probabilities_ui(pred, top: int = 10) -> None:
    """The most probable classes with their percentages."""
    ranked = sorted(pred.probs.items(), key=lambda kv: -kv[1])[:top]
    frame = pd.DataFrame({"class": [k for k, _ in ranked], "probability": [100 * v for _, v in ranked]})
    st.dataframe(frame, hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
        "probability", format="%.1f%%", min_value=0, max_value=100)})


def single_result_ui(md, doc: Document, pred) -> None:
    if pred.error:
        st.warning(f"{doc.name}: {pred.error}; nothing to classify.")
        return
    st.subheader(f"{doc.name}: **{pred.label or '(no label)'}** ({pred.score:.1%})")
    if pred.notice:
        reasons = pred.notice.removeprefix("low confidence: ").split("; ")
        st.warning("**Low confidence: this text may lie outside the model's classes, or between two of them.**\n\n"
                   + "\n".join(f"- {r}" for r in reasons)
                   + f"\n\nWhen the notice was measured, {md.confidence.summary()}.")
    probabilities_ui(pred)
    segments = -(-pred.n_tokens // md.model.config.segment_len)
    st.caption(f"{pred.n_tokens:,} tokens read in {segments:,} segment(s), all of them, with memory.")
    explanation = explanation_of(md, doc.text)
    if explanation is not None:
        explanation_ui(doc.text, explanation)
    if pred.encoder_label:
        ngram_ui(md, doc.text, pred)


def explanation_of(md, text: str):
    """The occlusion explanation of `text`, computed once per session and text, with per-segment progress."""
    cache = st.session_state.setdefault("explanations", {})
    key = (id(md), hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest())
    if key not in cache:
        bar = st.progress(0.0, text="Explaining: removing each segment in turn…")

        def step(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Explaining: segment {done:,} of {total:,} removed and read again")

        cache.clear()  # one document's explanation kept at a time
        cache[key] = explain(md, text, on_segment=step)
        bar.empty()
    return cache[key]


def explanation_ui(text: str, out, top: int = 5) -> None:
    unit = out.parts[0].unit if out.parts else "segment"
    st.markdown(f"**What drove the prediction**: each {unit}'s effect is how much the odds of *{out.label}* fall "
                f"when that {unit} is removed and the rest is read without it (log-odds; **+** supports "
                f"*{out.label}*, **−** speaks against it).")
    st.html(overview_html(out))
    lines = []
    for p in out.top(top):
        k = out.parts.index(p)
        excerpt = " ".join(text[p.start:p.end].split())
        excerpt = excerpt[:240] + ("…" if len(excerpt) > 240 else "")
        lines.append(f"- **{p.effect:+.3f}** [{unit} {k + 1}](#part-{k}) (characters {p.start:,}-{p.end:,}; encoder "
                     f"{p.encoder:+.3f}, n-grams {p.ngrams:+.3f}): {html.escape(excerpt)}")
    shown = min(top, len(out.parts))
    heading = f"The most influential {unit}" if shown == 1 else f"The {shown} most influential {unit}s"
    st.markdown(f"**{heading}**\n\n" + "\n".join(lines))
    st.html(highlight_html(text, out))


def _color(effect: float, peak: float) -> str:
    alpha = 0.15 + 0.6 * min(1.0, abs(effect) / peak)
    return f"rgba(34,160,80,{alpha:.2f})" if effect >= 0 else f"rgba(210,50,50,{alpha:.2f})"


def overview_html(out) -> str:
    """One cell per part, in document order, coloured by its effect, each a link into the document; a legend."""
    peak = max((abs(p.effect) for p in out.parts), default=1.0) or 1.0
    cells = "".join(f'<a href="#part-{k}" title="{out.parts[k].unit} {k + 1}: {p.effect:+.3f}" '
                    f'style="flex:1;min-width:2px;height:22px;background:{_color(p.effect, peak)}"></a>'
                    for k, p in enumerate(out.parts))
    legend = (f'<div style="font:12px sans-serif;margin-top:4px"><span style="background:{_color(peak, peak)}">'
              f'&nbsp;+{peak:.2f} supports {html.escape(out.label)}&nbsp;</span> &nbsp; <span style="background:'
              f'{_color(-peak, peak)}">&nbsp;−{peak:.2f} speaks against it&nbsp;</span> &nbsp; '
              f'start of the document on the left, end on the right; {len(out.parts):,} {out.parts[0].unit}'
              f'{"s" if len(out.parts) > 1 else ""}</div>') if out.parts else ""
    return f'<div style="display:flex;gap:1px;border:1px solid #ccc">{cells}</div>{legend}'


def _snap(text: str, i: int, reach: int = 40) -> int:
    """A boundary moved forward to the end of the word it falls in (display only)."""
    j = i
    while 0 < j < len(text) and j - i < reach and not text[j - 1].isspace() and not text[j].isspace():
        j += 1
    return j if j - i < reach else i


def highlight_html(text: str, out) -> str:
    """The document, each part shaded by its effect and opened by its value (readable without hovering)."""
    peak = max((abs(p.effect) for p in out.parts), default=1.0) or 1.0
    bounds = [0] + [_snap(text, p.start) for p in out.parts[1:]] + [len(text)]
    bounds = [max(bounds[:k + 1]) for k in range(len(bounds))]  # never backwards
    parts, shown = [], 0
    for k, p in enumerate(out.parts):
        if shown >= MAX_RENDER_CHARS:
            parts.append("<p><em>… (the rest of the document is not shown)</em></p>")
            break
        chunk = text[bounds[k]:bounds[k + 1]]
        shown += len(chunk)
        parts.append(f'<span id="part-{k}" style="background:{_color(p.effect, peak)}"><b style="font-size:11px">'
                     f'[{p.unit} {k + 1}: {p.effect:+.3f}]</b> {html.escape(chunk)}</span>')
    style = "white-space:pre-wrap;font-family:sans-serif;line-height:1.5;max-height:480px;overflow:auto"
    return f'<div style="{style}">{"".join(parts)}</div>'


def ngram_ui(md, text: str, pred) -> None:
    """A model with an n-gram component: what each part alone says, and the n-grams that pushed the label."""
    agree = "agree" if pred.encoder_label == pred.ngram_label else "disagree"
    st.markdown(f"**Encoder and n-grams {agree}**: the Transformer-XL encoder alone says *{pred.encoder_label}*, "
                f"the TF-IDF n-gram model alone *{pred.ngram_label}*; the prediction fuses both.")
    label = pred.label.split("|")[0]
    terms = md.ngram.term_contributions(text, md.labels.index(label)) if label in md.labels else []
    if terms:
        st.markdown("**Words and phrases that pushed toward it** (their part of the fused score):")
        st.dataframe(pd.DataFrame(terms, columns=["n-gram", "contribution"]).round(4), hide_index=True)


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
        landing_ui(md)
        docs, problems, failed = input_ui(md)
        for p in problems:
            st.warning(p)
        if not docs:
            return
        preds = classify_ui(md, docs)
        pick = 0 if len(docs) == 1 and not failed else many_results_ui(md, docs, preds, failed)
        single_result_ui(md, docs[pick], preds[pick])


if __name__ == "__main__":
    main()

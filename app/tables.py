"""Uploaded tables (CSV, TSV, JSONL, Parquet) → one document per row of the text column.

Parsing, decoding, errors and the choice of the text column are `txl`'s own (`pipelines.data`): an upload
gives the same rows and texts as `txl classify` on the same bytes. The app adds the Parquet size limit,
the documents' names, and a warning for the rows whose text is empty, which it skips.
"""
from __future__ import annotations

from app.decode import Document, ExtractError, ExtractResult, as_extract_errors, mb
from pipelines.data.tables import Source, as_text, load_table, parquet_unpacked_bytes, table_format
from pipelines.data.text_column import pick_text_column, text_like_columns


def table_result(name: str, data: bytes, *, text_column: str | None, max_unpacked_bytes: int) -> ExtractResult:
    """The documents of the table `name` with content `data`: its `text_column`, or the one the rule picks."""
    source = Source.upload(name, data)
    with as_extract_errors():
        if table_format(source) == "parquet":
            _check_unpacked(source, max_unpacked_bytes)
        table = load_table(source)
        column = pick_text_column(table.frame, text_column, name=name)
        candidates = text_like_columns(table.frame)
    texts = [as_text(v).strip() for v in table.frame[column]]
    documents = [Document(f"{name}#{row}", t) for row, t in enumerate(texts, start=1) if t]
    if not documents:
        raise ExtractError(f"{name}: every {column!r} cell is empty; choose the column that holds the text")
    warnings = list(table.notes)
    if len(documents) < len(texts):
        warnings.append(f"{name}: skipped {len(texts) - len(documents)} rows with an empty {column!r} cell")
    return ExtractResult(documents, columns=candidates, text_column=column, warnings=warnings)


def _check_unpacked(source: Source, max_unpacked_bytes: int) -> None:
    """Refuse, from its footer alone, a Parquet file whose data would unpack past the limit in memory."""
    unpacked = parquet_unpacked_bytes(source)
    if unpacked > max_unpacked_bytes:
        raise ExtractError(f"{source.name} unpacks to {mb(unpacked)}, over the {mb(max_unpacked_bytes)} limit; "
                           "split it into smaller files")

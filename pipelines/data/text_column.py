"""Which column of a table holds the documents' text: one rule for `txl` and the app.

The column the user named; else the first of text / body / content / document (in that order, any case)
among the text-like columns; else the text-like column with the longest mean length. A column is text-like
when at least half of its non-empty cells are strings that are neither numbers nor flags, so ids, scores and
yes/no columns are never guessed. Only the first SAMPLE_ROWS data rows are looked at, so a file read whole
(the app) and the same file read in chunks (`txl`) get the same column.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.data.table_errors import no_column_message
from pipelines.data.tables import Source, as_text, load_table
from pipelines.errors import UserError

TEXT_COLUMN_NAMES = ("text", "body", "content", "document")  # preferred, in this order
FLAG_WORDS = frozenset({"true", "false", "yes", "no"})
SAMPLE_ROWS = 1000


def _is_word(cell: str) -> bool:
    """A string that is not a number or a flag."""
    if cell.strip().lower() in FLAG_WORDS:
        return False
    try:
        float(cell)
    except ValueError:
        return True
    return False


def text_like(values: pd.Series) -> bool:
    """At least half of the non-empty cells among the first SAMPLE_ROWS are words (see `_is_word`)."""
    cells = [v for v in values.head(SAMPLE_ROWS) if as_text(v).strip()]
    words = sum(isinstance(v, str) and _is_word(v) for v in cells)
    return bool(cells) and 2 * words >= len(cells)


def text_like_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a user may sensibly pick as the text, in the table's order."""
    return [c for c in frame.columns if text_like(frame[c])]


def pick_text_column(frame: pd.DataFrame, requested: str | None = None, *, name: str) -> str:
    """The text column of `frame` (read from the file `name`) by the rule above; a UserError when `requested`
    is missing or no column is text-like."""
    if requested is not None:
        if requested not in frame.columns:
            raise UserError(no_column_message(name, requested, [str(c) for c in frame.columns]))
        return requested
    sample = frame.head(SAMPLE_ROWS)
    candidates = text_like_columns(sample)
    by_name = {str(c).strip().lower(): c for c in candidates}
    for preferred in TEXT_COLUMN_NAMES:
        if preferred in by_name:
            return by_name[preferred]
    if not candidates:
        raise UserError(f"{name}: no column holds text (its columns: {', '.join(map(repr, frame.columns))}); "
                        "name the column that holds the text")
    return max(candidates, key=lambda c: sample[c].map(lambda v: len(as_text(v))).mean())


def find_text_column(source: str | Path | Source, requested: str | None = None) -> str:
    """`pick_text_column` for a table file, reading only its first SAMPLE_ROWS rows."""
    source = Source.of(source)
    return pick_text_column(load_table(source, rows=SAMPLE_ROWS).frame, requested, name=source.name)

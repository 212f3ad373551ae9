"""Labelled tables for `txl train`, `evaluate` and `baseline`: texts and label strings, one split of a file.

Reading the file is `io`'s job; here a row becomes (text, label): a list of labels (JSON lines, Parquet) is
the multi-label 'a|b', a split is chosen by the usual spellings of its name, and rows without a text or a
label are dropped with a warning that says how many and where.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.labels import SEPARATOR, normalize_label, stratified_split
from pipelines.data.tables import as_text, read_table, table_columns, text_column_problem
from pipelines.errors import DataWarning, UserError

SPLIT_NAMES = (("train", "training"), ("valid", "validation", "val", "dev"), ("test", "testing"))


def _label_text(value) -> str:
    """A label cell as a string; a list of labels (JSON lines, Parquet) becomes the multi-label 'a|b'."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return SEPARATOR.join(as_text(v) for v in value)
    return as_text(value)


def _select_split(frame: pd.DataFrame, path: Path, column: str, split: str) -> pd.DataFrame:
    """Rows whose split is `split`, accepting the usual spellings (valid / validation / dev ...)."""
    values = frame[column].map(lambda v: as_text(v).strip().lower())
    wanted = next((set(names) for names in SPLIT_NAMES if split.lower() in names), {split.lower()})
    rows = frame[values.isin(wanted)]
    if rows.empty:
        found = ", ".join(map(repr, sorted(set(values))[:10]))
        raise UserError(f"{path.name}: no rows with {column} = {split!r} (it has {found}); use a file for this "
                        f"split, or one whose {column!r} column names it")
    return rows


def load_labeled(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                 split: str | None = None, split_column: str = "split") -> tuple[list[str], list[str]]:
    """Texts and label strings ('a|b' for a multi-label row) of a labelled table.

    With `split`, and when the file has a `split_column`, only that split's rows. Rows with an empty text
    or no label are dropped with a DataWarning; a UserError when no row is left.
    """
    path = Path(path)
    if text_column == label_column or (split is not None and split_column in (text_column, label_column)):
        raise UserError(f"the text, label and split columns must be different columns, not {text_column!r}, "
                        f"{label_column!r} and {split_column!r}; name them with --text-column, --label-column and "
                        "--split-column")
    has_split = split is not None and split_column in table_columns(path)
    frame = read_table(path, columns=[text_column, label_column, *([split_column] if has_split else [])])
    if has_split:
        frame = _select_split(frame, path, split_column, split)
    texts = [as_text(t) for t in frame[text_column]]
    problem = text_column_problem(texts[:2000], path.name, text_column)
    if problem and "is empty in all" not in problem:  # an empty column is refused below
        warnings.warn(problem, DataWarning, stacklevel=2)
    labels = [normalize_label(_label_text(y)) for y in frame[label_column]]
    no_text = [i for i, t in enumerate(texts) if not t.strip()]
    no_label = [i for i, y in enumerate(labels) if not y and texts[i].strip()]
    for rows, what in ((no_text, "an empty text"), (no_label, "no label")):
        if rows:
            warnings.warn(f"{path.name}: skipped {len(rows)} of {len(texts)} rows with {what} "
                          f"(the first is data row {frame.index[rows[0]]})", DataWarning, stacklevel=2)
    drop = set(no_text) | set(no_label)
    keep = [i for i in range(len(texts)) if i not in drop]
    if not keep:
        raise UserError(f"{path.name}: no row has both a text in {text_column!r} and a label in {label_column!r}")
    return [texts[i] for i in keep], [labels[i] for i in keep]


@dataclass(frozen=True)
class Columns:
    """Which columns of a labelled file hold the text, the label and each row's split."""
    text: str = "text"
    label: str = "label"
    split: str = "split"


def columns_of(args) -> Columns:
    """The columns a command's --text-column, --label-column and --split-column name."""
    return Columns(args.text_column, args.label_column, args.split_column)


def load_split(path: str | Path, columns: Columns, split: str | None) -> tuple[list[str], list[str]]:
    """Texts and labels of `split` in `path` (the whole file when it has no split column)."""
    return load_labeled(path, text_column=columns.text, label_column=columns.label, split_column=columns.split,
                        split=split)


def load_train_valid(train: str | Path, valid: str | Path | None, *, columns: Columns, seed: int):
    """(texts, labels, validation texts, validation labels): `valid`'s rows, or else a stratified 10% of
    `train` carved with `seed` (the split `txl train` and `txl fuse` carve alike)."""
    texts, labels = load_split(train, columns, "train")
    if valid:
        return (texts, labels, *load_split(valid, columns, "valid"))
    tr, va = stratified_split(labels, valid_fraction=0.1, seed=seed)
    if not va:
        raise UserError(f"no validation split can be carved from {len(labels)} documents with one example per "
                        "class; add examples or pass --valid")
    return ([texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in va], [labels[i] for i in va])

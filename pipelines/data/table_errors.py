"""What can be wrong with a table that its owner can fix, each as a one-line `UserError` saying what to do:
a repeated or mis-delimited header, a missing column, a line of JSON that is not an object, and the many
exceptions of the parsers and decompressors, whose cause is the file.
"""
from __future__ import annotations

import difflib
import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import pandas as pd
import pyarrow as pa

from pipelines.data.sources import DAMAGED
from pipelines.errors import UserError

DELIMITERS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars"}
NOT_AN_OBJECT = 'each line must be one JSON object, like {"text": "..."}'


@contextmanager
def reading(name: str, fmt: str, *, locate: Callable[[], str | None] | None = None):
    """Turn the parsers' and decompressors' exceptions into one-line UserErrors. `locate`, for JSON lines, says
    where the first line that is not a JSON object is (pandas does not say)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # rows longer than the header: data loss
            yield
    except UserError:
        raise
    except pd.errors.ParserWarning:
        raise UserError(f"cannot parse {name}: some rows have more fields than the header, so their text would be "
                        "cut at a delimiter; check the delimiter, and that texts holding the delimiter, quotes or "
                        "newlines are in double quotes") from None
    except pd.errors.ParserError as e:
        raise UserError(f"cannot parse {name}: {last_line(e)}; check the delimiter, and that texts "
                        "holding the delimiter, quotes or newlines are in double quotes") from None
    except (ValueError, TypeError, pa.ArrowException) as e:
        if isinstance(e, TypeError) and fmt != "jsonl":  # pandas' TypeError on an array among objects
            raise
        raise UserError(_unparseable(name, fmt, e, locate)) from None
    except PermissionError:
        raise UserError(f"cannot read {name}: permission denied; check the file's permissions") from None
    except RecursionError:
        raise UserError(f"cannot parse {name}: it nests arrays or objects too deep to read (thousands of levels); "
                        "flatten the values, or keep only the text and label") from None
    except DAMAGED as e:
        if "too much memory" in str(e):  # zstd --long=31: a valid file whose window would take gigabytes
            raise UserError(f"cannot read {name}: it was compressed with a window too large to decompress in "
                            "bounded memory (zstd --long above 27); recompress it with plain zstd") from None
        raise UserError(f"cannot read {name}: the file is damaged, truncated or not what its name says "
                        f"({last_line(e)})") from None


def _unparseable(name: str, fmt: str, error: Exception, locate) -> str:
    try:
        where = locate() if locate else None
    except (*DAMAGED, ValueError):
        where = None
    if where:
        return f"cannot parse {name} as JSON lines: {where}; {NOT_AN_OBJECT}"
    kind = {"jsonl": "JSON lines (one JSON object per line)", "parquet": "Parquet"}.get(fmt, fmt.upper())
    return f"cannot parse {name} as {kind}: {last_line(error)}"


def first_bad_json_line(lines: Iterable[str]) -> str | None:
    """'line N is ...' for the first of `lines` that is not a JSON object (blank lines aside), else None."""
    kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {number} is not valid JSON ({e.msg})"
        except RecursionError:
            return f"line {number} nests arrays or objects too deep to read"
        if not isinstance(value, dict):
            return f"line {number} is {kinds.get(type(value), 'a number')}, not an object"
    return None


def last_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1][:160] if lines else type(error).__name__


def objects_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame of JSON lines, once every line is known to be an object: JSON keys are strings, while pandas
    numbers the columns of a line that is an array or a bare value. Raises ValueError for `reading`."""
    if any(not isinstance(c, str) for c in frame.columns):
        raise ValueError("a line is not a JSON object")
    return frame


def check_repeats(header: list[str], name: str) -> None:
    """Refuse a repeated column name, which pandas would silently rename 'a.1'."""
    counts = Counter(header)  # not header.count: quadratic, minutes for a header of 100,000 names
    repeated = sorted(h for h, n in counts.items() if n > 1)
    if repeated:
        raise UserError(f"{name}: the header repeats the column(s) {', '.join(map(repr, repeated))}; "
                        "rename them so that every column has its own name")


def check_delimiter(name: str, fmt: str, columns: list[str]) -> None:
    """Refuse a CSV/TSV that parsed to one column whose name holds a delimiter: another one separates it."""
    if len(columns) != 1 or not max(map(columns[0].count, DELIMITERS)):
        return
    found = max(DELIMITERS, key=columns[0].count)
    fix = {"\t": "name it .tsv", ",": "name it .csv"}.get(found, "save it with commas (.csv) or tabs (.tsv)")
    raise UserError(f"{name} parsed to a single column {columns[0][:60]!r}: it seems to be separated by "
                    f"{DELIMITERS[found]}, not {'tabs' if fmt == 'tsv' else 'commas'}; {fix}")


def no_column_message(name: str, column: str, have: list[str]) -> str:
    """'<name> has no column ... (its columns: ...); did you mean ...?', ending in a full stop."""
    lowered = {h.lower(): h for h in have}
    close = difflib.get_close_matches(column.lower(), list(lowered), n=1, cutoff=0.5)
    hint = f"; did you mean {lowered[close[0]]!r}?" if close else "."
    return f"{name} has no column {column!r} (its columns: {', '.join(map(repr, have[:30]))}){hint}"


def check_columns(name: str, have: list[str], wanted: list[str]) -> None:
    """Refuse a column a command names (--text-column, --label-column) that the table lacks."""
    for column in (c for c in wanted if c not in have):
        raise UserError(f"{no_column_message(name, column, have)} Choose the column with --text-column / "
                        "--label-column")

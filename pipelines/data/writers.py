"""Writing result tables: the format follows the file name, and the file appears only when complete."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"cannot write {path}: the output name must end in one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP: CSV injection)


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell (and column name) that starts like a formula prefixed with a single quote, as
    OWASP recommends for CSV files opened in spreadsheets; numbers are left alone."""
    def escaped(v):
        return "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v

    out = frame
    for col in frame.columns:
        texts = frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype)
        if texts and frame[col].map(lambda v: escaped(v) is not v).any():
            out = out.copy() if out is frame else out
            out[col] = frame[col].map(escaped)
    if any(escaped(str(c)) != str(c) for c in frame.columns):
        out = out.copy() if out is frame else out
        out.columns = [escaped(str(c)) for c in frame.columns]
    return out


def refuse_overwrite(path: str | os.PathLike, *, overwrite: bool, flag: str = "--overwrite") -> None:
    """A command never replaces a file it did not create unless asked: a one-line UserError (exit 2)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass {flag} to replace it, or choose another name")


def check_writable(folder: Path, flag: str) -> None:
    """Before any work starts: the folder an output goes into can be written (the folders missing on its path
    are created later). A one-line UserError names the first folder that exists and why it cannot be."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag}: {existing} is a file, not a folder; choose another place")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write in {existing} (read-only or permission denied); choose another place")


@contextmanager
def output_lock(path: str | os.PathLike, command: str) -> Iterator[None]:
    """Held while a job writes `path` (and its `.partial` folder): a second job on the same output stops at once
    with a one-line UserError naming the process that holds it, instead of both writing (or one deleting the
    other's chunks). The lock file, `.<name>.lock` beside the output, is removed when the job ends; a killed
    job's lock is released by the system with its process. Under torchrun only rank 0 takes it."""
    import fcntl

    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another txl {command} (process {holder}) is writing {path}; wait for it to finish, "
                            "or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a lock file its last holder removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    held = os.pread(fd, 64, 0).strip()  # pread: the process number below is written from offset 0
    if held and not held.isdigit():  # a stale lock holds a process number; anything else is a file of the user's
        os.close(fd)
        raise UserError(f"{lock} is in the way of this job's lock file and is not one; move it away or delete it")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    except OSError as e:  # a full disk under pyarrow says neither where nor which file: the output's path, then
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def write_frame(frames: Iterable[pd.DataFrame], path: str | os.PathLike) -> None:
    """Write the frames one after the other into `path`, through a temporary file renamed at the end."""
    path = Path(path)
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _file_mode())
    os.close(fd)
    try:
        _write(frames, tmp, fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write(frames: Iterable[pd.DataFrame], tmp: str, fmt: str) -> None:
    if fmt == "parquet":
        writer = None
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is not None:
            writer.close()
        return
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for i, frame in enumerate(frames):
            if fmt == "jsonl":
                frame.to_json(f, orient="records", lines=True, force_ascii=False)
            else:
                frame = escape_formulas(frame)
                frame.to_csv(f, index=False, header=i == 0, sep="\t" if fmt == "tsv" else ",",
                             quoting=csv.QUOTE_NONNUMERIC if _has_carriage_return(frame) else csv.QUOTE_MINIMAL)


def _has_carriage_return(frame: pd.DataFrame) -> bool:
    """Whether a text cell holds a bare '\r': the csv module quotes the '\n' line end's characters only, and an
    unquoted '\r' ends the row for most readers (pandas included), shifting the rest into a new one."""
    return any(frame[c].map(lambda v: isinstance(v, str) and "\r" in v).any() for c in frame.columns
               if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype))


def output_columns(labels: list[str], top_k: int, *extra: str) -> list[str]:
    """The columns `result_columns` adds (and `extra` ones a command adds after it, e.g. explanation)."""
    tops = [f"top{k + 1}_{what}" for k in range(top_k) for what in ("label", "score")]
    return ["predicted_label", "score", *(f"prob_{name}" for name in labels), *tops, "notice", "error", *extra]


def renamed_inputs(columns, reserved) -> dict[str, str]:
    """Input columns named like an output column, and the names they keep in the output: `input_<name>` (never
    dropped: a table that is itself an earlier run's output keeps its old predictions beside the new ones)."""
    taken, renamed = {str(c) for c in columns} | set(reserved), {}
    for column in columns:
        if column in reserved:
            new = f"input_{column}"
            while new in taken:
                new = f"input_{new}"
            taken.add(new)
            renamed[column] = new
    return renamed


def result_columns(chunk: pd.DataFrame, preds, labels: list[str], top_k: int, *extra: str) -> pd.DataFrame:
    """`chunk` with the predictions' columns: predicted_label, score, prob_<label>, top<k>_label/score, notice (the
    low-confidence notice, pipelines/model/confidence.py; empty when there is none), error. Input columns of the
    same names (or of the `extra` ones the caller adds) are kept as `input_<name>` (`renamed_inputs`)."""
    columns = {"predicted_label": [p.label for p in preds], "score": [p.score for p in preds]}
    probs = np.full((len(preds), len(labels)), np.nan)
    index = {name: i for i, name in enumerate(labels)}
    for row, p in enumerate(preds):
        for name, value in p.probs.items():
            probs[row, index[name]] = value
    columns.update({f"prob_{name}": probs[:, i] for i, name in enumerate(labels)})
    ranked = [sorted(p.probs.items(), key=lambda kv: -kv[1])[:top_k] for p in preds] if top_k else []
    for k in range(top_k):
        columns[f"top{k + 1}_label"] = [r[k][0] if len(r) > k else "" for r in ranked]
        columns[f"top{k + 1}_score"] = [r[k][1] if len(r) > k else float("nan") for r in ranked]
    columns["notice"] = [p.notice for p in preds]
    columns["error"] = [p.error for p in preds]
    # one concat: a column added at a time to a wide frame made pandas warn once per label (6,059 warnings)
    added = pd.DataFrame(columns, index=chunk.index)
    kept = chunk.rename(columns=renamed_inputs(chunk.columns, [*added.columns, *extra]))
    return pd.concat([kept, added], axis=1)


def _file_mode() -> int:
    """The permissions a new file gets under the user's umask (mkstemp's temporary files are private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, _file_mode())
    try:
        with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        os.replace(tmp, path)
    finally:  # a full disk leaves no half-written temporary file behind
        if os.path.exists(tmp):
            os.unlink(tmp)


def content_hash(*paths: str | os.PathLike) -> str:
    """sha256 of the files' bytes (a folder: of every file in it, by name), read in blocks: what a restartable
    job's fingerprint holds, so that a changed model file or input is noticed whatever its timestamps say."""
    import hashlib

    digest = hashlib.sha256()
    for path in map(Path, paths):
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            if not file.is_file():
                continue
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


_JOB_FILE = re.compile(r"job\.json|\.job\.json\..+|\.?part-\d{6}(\.parquet)?(\.tmp)?")  # what a job writes there


def _job_fingerprint(part: Path) -> str | None:
    try:
        return json.loads((part / "job.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):  # missing, damaged or not an object: not this job's
        return None


def job_folder(part: Path, fingerprint: str, command: str) -> Path:
    """The folder of a restartable job's finished chunks: kept when its `job.json` holds `fingerprint` (the
    same job, interrupted), emptied when it belongs to another job (never mixed), created when missing. A folder
    there that holds files no job writes is the user's: refused, never emptied."""
    stamp = part / "job.json"
    if part.is_symlink() or (part.exists() and not part.is_dir()):
        raise UserError(f"{part} is in the way of this job's finished chunks and is not a folder of its own; move it "
                        "away or delete it")
    if part.exists() and _job_fingerprint(part) != fingerprint:
        strangers = [f.name for f in part.iterdir() if not _JOB_FILE.fullmatch(f.name)]
        if strangers:
            raise UserError(f"{part} is in the way of this job's finished chunks and holds files it did not write "
                            f"({', '.join(sorted(strangers)[:3])}); move it away or delete it")
        print(f"txl {command}: {part} belongs to another job; starting over", file=sys.stderr)
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        write_atomic(stamp, json.dumps({"fingerprint": fingerprint}))
    return part

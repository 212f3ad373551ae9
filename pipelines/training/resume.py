"""Resumable training checkpoints (`<out>/checkpoint/`), written as a whole.

A checkpoint is several files: weights, optimiser and random state, the step reached. Replaced one by one,
a kill between two of the renames leaves new weights beside an old step count or optimiser state, and a
resumed run would train on from that mix without a word. `write_checkpoint` writes the new checkpoint into
a sibling folder and swaps it in with two renames, so a kill at any moment leaves the old checkpoint or the
new one; `checkpoint_dir` puts the old one back when the kill fell between the renames.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Union

Content = Union[str, bytes, Callable[[Path], None]]  # text, bytes, or a function that writes the file it is given


def _siblings(ck: Path) -> tuple[Path, Path]:
    return ck.with_name(ck.name + ".new"), ck.with_name(ck.name + ".old")


def checkpoint_dir(out: str | Path) -> Path:
    """`<out>/checkpoint`, restored from `checkpoint.old` if a kill fell between the swap's two renames."""
    ck = Path(out) / "checkpoint"
    _, old = _siblings(ck)
    if not ck.exists() and old.is_dir():
        try:
            old.rename(ck)
        except OSError:  # another process (a torchrun rank) put it back first
            pass
    return ck


def _link(src, dst) -> None:
    """A file never changes in place here, so sharing it is safe (a copy where links are not possible)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_checkpoint(out: str | Path, files: dict[str, Content]) -> Path:
    """Make `files` (name -> content) the checkpoint of `out`; the current checkpoint's other files (the
    tokenizer and settings a run writes when it starts) are carried over. Returns the checkpoint folder."""
    ck = checkpoint_dir(out)
    new, old = _siblings(ck)
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    if ck.is_dir():
        for src in ck.iterdir():
            if src.name in files or src.name.startswith("."):
                continue
            if src.is_dir():  # the frozen stage's cached vectors: kept for a resume and for benchmarks/peer.py
                shutil.copytree(src, new / src.name, copy_function=_link)
            elif src.is_file():
                _link(src, new / src.name)
    for name, content in files.items():
        if callable(content):
            content(new / name)
        else:
            (new / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    shutil.rmtree(old, ignore_errors=True)
    if ck.exists():
        ck.rename(old)
    new.rename(ck)
    shutil.rmtree(old, ignore_errors=True)
    return ck

"""`txl`: the one command line. Each subcommand is a module with a docstring, `add_arguments` and `run(args)`.

A module is imported only when its command runs or prints its help, so a command whose module (or one of its
optional dependencies) is missing shows as unavailable without breaking the others.
"""
from __future__ import annotations

import argparse
import ast
import errno
import importlib
import importlib.util
import os
import sys
import traceback
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

from pipelines.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    DataWarning,
    Interrupted,
    UserError,
)
from pipelines.runtime.memory import use_huge_pages
from pipelines.runtime.threads import choose_wait_policy

COMMANDS = {
    "train": "pipelines.commands.train",
    "classify": "pipelines.commands.classify",
    "evaluate": "pipelines.commands.evaluate",
    "baseline": "pipelines.commands.baseline",
    "fuse": "pipelines.commands.fuse",
    "pretrain": "pipelines.commands.pretrain",
    "app": "pipelines.commands.app",
    "bench": "pipelines.commands.bench",
}
UNAVAILABLE = "(not available in this version)"


def _summary(module_name: str) -> str | None:
    """The first docstring line, read from the source: importing every command for `txl --help` would load
    torch and streamlit. None when the module does not exist."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None if spec is None else ""
    try:
        doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the whole usage block first), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="txl", description="Long-document classification with Transformer-XL.",
        epilog="Run `txl COMMAND --help` for a command's options. Set TXL_DEBUG=1 to see tracebacks.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, module_name in COMMANDS.items():
        summary = _summary(module_name)
        subs.add_parser(name, add_help=False, help=UNAVAILABLE if summary is None else summary)
    return parser


def _import_command(name: str) -> ModuleType:
    module_name = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise UserError("this command is not available in this version of txl") from None
        if e.name and e.name.split(".")[0] not in ("pipelines", "txl_core", "app"):
            raise UserError(f"this command needs the package {e.name!r}, which is not installed; "
                            f"install it (for the app: pip install 'txl-doc[app]')") from None
        raise
    if not (callable(getattr(module, "add_arguments", None)) and callable(getattr(module, "run", None))):
        raise UserError("this command is not available in this version of txl (its module is incomplete)")
    return module


def _dispatch(name: str, rest: list[str]) -> int:
    module = _import_command(name)
    parser = _Parser(prog=f"txl {name}", description=(module.__doc__ or "").strip() or None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command = name
    return int(module.run(args) or 0)


def _one_line(error: BaseException, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


def _debug() -> bool:
    return os.environ.get("TXL_DEBUG", "") not in ("", "0")


def _exit_code(e: SystemExit) -> int:
    """argparse exits 0 after --help and 2 on bad arguments; `main` returns those codes instead."""
    return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_INTERNAL)


def _guarded(name: str, work: Callable[[], int]) -> int:
    """Run `work`, turning every failure into one line on stderr and an exit code."""
    def say(text: str) -> None:
        print(f"txl {name}: {text}", file=sys.stderr)

    try:
        return work()
    except SystemExit as e:
        return _exit_code(e)
    except UserError as e:
        if _debug():
            traceback.print_exc()
        say(f"error: {_one_line(e, limit=2000)}")
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        say(f"interrupted: {e}" if isinstance(e, Interrupted) and str(e) else "interrupted")
        return EXIT_INTERRUPTED
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            return _internal(say, e)
        if _debug():
            traceback.print_exc()
        where = f" at {e.filename}" if e.filename else ""
        what, fix = USER_ERRNOS[e.errno]
        say(f"error: {what}{where}; {fix} (what was finished is kept: rerun the same command to continue)")
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, the traceback on request
        return _internal(say, e)


def _internal(say: Callable[[str], None], e: BaseException) -> int:
    if _debug():
        traceback.print_exception(e)
    detail = f": {_one_line(e)}" if _one_line(e) else ""
    hint = "" if _debug() else " (rerun with TXL_DEBUG=1 for the traceback)"
    say(f"internal error: {type(e).__name__}{detail}{hint}")
    return EXIT_INTERNAL


# failures of the machine a user can fix, whenever they happen: one line and exit 2, not an internal error
USER_ERRNOS = {errno.ENOSPC: ("no space left on the disk", "free some space or write elsewhere"),
               errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
               errno.EROFS: ("the file system is read-only", "write elsewhere"),
               errno.EACCES: ("permission denied", "fix the permissions or write elsewhere"),
               errno.EPERM: ("operation not permitted", "fix the permissions or write elsewhere"),
               errno.EMFILE: ("too many open files", "raise the limit (ulimit -n)"),
               errno.ENAMETOOLONG: ("a file name is too long", "choose a shorter name"),
               errno.EISDIR: ("a folder stands where a file goes", "choose another name"),
               errno.ENOTDIR: ("a file stands where a folder goes", "choose another path")}


def _warning_printer(name: str, default):
    """Show a DataWarning as one `txl NAME: warning: ...` line; other warnings as Python would."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"txl {name}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            parser.parse_args(argv)  # exits: 0 after --help, 2 with argparse's message for an unknown command
        except SystemExit as e:
            return _exit_code(e)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name = argv[0]
    choose_wait_policy()  # both before the command imports torch
    use_huge_pages()
    with warnings.catch_warnings():  # restores the filters and the printer when the command ends
        warnings.simplefilter("always", DataWarning)  # the same skipped-rows note for two files is two notes
        warnings.showwarning = _warning_printer(name, warnings.showwarning)
        return _guarded(name, lambda: _dispatch(name, argv[1:]))


if __name__ == "__main__":
    sys.exit(main())

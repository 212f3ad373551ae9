"""Errors and warnings a user can act on, and the exit codes scripts can rely on."""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: the message asks for TXL_DEBUG=1 and a report
EXIT_USAGE = 2  # bad input or arguments: the message says what to change
EXIT_STOPPED = 3  # stopped early on purpose (a time budget); the work so far is kept and can be resumed
EXIT_INTERRUPTED = 130  # Ctrl-C, the shell's convention (128 + SIGINT)


class UserError(Exception):
    """A one-line message saying what went wrong and what to do; printed without a traceback."""


class DataWarning(UserWarning):
    """Input was odd but usable (rows skipped, a Latin-1 fallback); `txl` prints it as one line.

    A warning rather than a print, so that the app can collect and show it and tests can assert on it.
    """

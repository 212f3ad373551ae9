"""Errors a user can act on, and the exit codes scripts can rely on."""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: the message asks for TXL_DEBUG=1 and a report
EXIT_USAGE = 2  # bad input or arguments: the message says what to change
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A one-line message saying what went wrong and what to do; printed without a traceback."""

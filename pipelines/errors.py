"""Errors and warnings a user can act on, and the exit codes scripts can rely on."""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: the message asks for TXL_DEBUG=1 and a report
EXIT_USAGE = 2  # bad input or arguments: the message says what to change
EXIT_STOPPED = 3  # stopped early on purpose (a time budget); the work so far is kept and can be resumed
EXIT_INTERRUPTED = 130  # Ctrl-C, the shell's convention (128 + SIGINT)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) handled: the work so far is saved; the message says how to continue."""


class UserError(Exception):
    """A one-line message saying what went wrong and what to do; printed without a traceback."""


class DataWarning(UserWarning):
    """Input was odd but usable (rows skipped, a Latin-1 fallback); `txl` prints it as one line.

    A warning rather than a print, so that the app can collect and show it and tests can assert on it.
    """


def bounded(kind: type = int, *, at_least: float | None = None, above: float | None = None,
            below: float | None = None):
    """An argparse `type`: a number of `kind` within the bounds, else argparse's one-line usage error."""
    import argparse

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        for ok, words, bound in ((at_least is None or value >= at_least, "at least", at_least),
                                 (above is None or value > above, "above", above),
                                 (below is None or value < below, "below", below)):
            if not ok:
                raise argparse.ArgumentTypeError(f"must be {words} {bound}, got {value}")
        return value
    return parse


def int_at_least(minimum: int):
    """An argparse `type`: a whole number of at least `minimum`."""
    return bounded(int, at_least=minimum)

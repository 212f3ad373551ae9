"""Ctrl-C as a pause for the training loops (`txl train`, `txl pretrain`): the first SIGINT or SIGTERM asks the
loop to stop after its current step with a checkpoint; a second one acts at once."""
from __future__ import annotations

import signal
import sys
import threading

from pipelines.errors import Interrupted
from pipelines.runtime import distributed as dist


class StopRequests:
    """Within the block, the first SIGINT or SIGTERM only sets `requested` (and says so): the training loop
    stops after its current step with a checkpoint. The handlers are then the previous ones again, so a
    second signal acts at once (Ctrl-C: KeyboardInterrupt). Outside the main thread (where Python allows no
    handlers) nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, command: str = "txl train"):
        self.command, self.requested = command, False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self._restore()
        if dist.is_main():
            print(f"\n{self.command}: {signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  "(press Ctrl-C again to stop at once, losing the steps since the last checkpoint)",
                  file=sys.stderr, flush=True)

    @staticmethod
    def stopped(step: int, total: int, out) -> Interrupted:
        """The error a loop raises once it has stopped on request and written its checkpoint in `out`."""
        return Interrupted(f"stopped after step {step} of {total} with a checkpoint in {out}; rerun the same "
                           "command with --resume to continue")

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()

"""How `txl train --max-minutes` spends its budget, and the one plan line that says so.

The n-gram stage runs first, in at most NGRAM_SHARE of the budget, and its time is measured, not guessed. The
frozen encoder then reads the validation documents (a random sample of at least MIN_VALID when reading them all
would take more than VALID_SHARE of what is left: the encoder's validation, and the fusion's, use that sample),
which measures its speed on this machine; from that speed the rest is split: reading training
documents whole gets up to half (all of it when fine-tuning could not take MIN_STEPS steps in the other half),
fine-tuning the rest, less one validation pass kept for its last evaluation. When half reads every document with
time to spare, reading stops once they are read, and fine-tuning takes the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

NGRAM_SHARE = 0.25  # of the budget, at most, for the n-gram stage (it reads a sample of the texts beyond that)
VALID_SHARE = 0.2  # of the budget left after the n-grams, at most, for reading the validation documents
MIN_VALID = 60  # validation documents read whatever the budget (all of them when fewer)
FROZEN_SHARE = 0.5  # of the budget left after the n-grams and the validation reading, when fine-tuning follows
FINE_TUNE_COST = 6.0  # a token back-propagated costs about this many read (MiniLM, two passes: measured 4-9x)
MIN_STEPS = 40  # fewer fine-tuning steps than this in their share: reading gets the time instead


@dataclass(frozen=True)
class Budget:
    """Seconds of the whole run (None: no budget, the epochs decide) and of the n-gram stage, measured."""

    total: float | None
    ngrams: float = 0.0

    def left(self, spent: float) -> float | None:
        """Seconds left once the n-grams and `spent` seconds of reading are done (None: no budget)."""
        return None if self.total is None else max(0.0, self.total - self.ngrams - spent)


def step_seconds(lengths: list[int], *, batch_size: int, window_tokens: int, tokens_per_second: float) -> float:
    """Expected seconds of one fine-tuning step, from the reading speed: each document's back-propagated window
    (`window_tokens`, 0: all of it) at FINE_TUNE_COST, and on average half the rest read before the window."""
    if not lengths or tokens_per_second <= 0:
        return float("inf")
    cost = 0.0
    for n in lengths:
        w = n if not window_tokens else min(n, window_tokens)
        cost += w * FINE_TUNE_COST + (n - w) / 2
    return batch_size * cost / len(lengths) / tokens_per_second


@dataclass(frozen=True)
class Split:
    """What the reading stage may take (seconds from its start, None: all it needs) and the fine-tuning steps
    expected after it (0 under a budget: no fine-tuning; without one the epochs decide)."""

    reading: float | None
    steps: int


def fine_tune_steps(seconds: float, *, validation: float, step: float) -> int:
    """Steps fine-tuning takes in `seconds`, one validation pass (`validation` seconds) kept for its last
    evaluation; 0 below MIN_STEPS (the time goes to reading instead)."""
    steps = int(max(0.0, seconds - validation) / step) if step > 0 else 0
    return steps if steps >= MIN_STEPS else 0


def split(budget: Budget, *, spent: float, read_all: float, step: float) -> Split:
    """Share the budget left after the n-grams and `spent` seconds of validation reading (which is also what a
    validation pass costs) between reading the training documents (`read_all` seconds for all of them) and
    fine-tuning (`step` seconds a step)."""
    left = budget.left(spent)
    if left is None:
        return Split(None, 0)  # no budget: read everything, then the epochs decide
    share = FROZEN_SHARE * left
    steps = fine_tune_steps(left - min(read_all, share), validation=spent, step=step)
    if steps:  # reading ends when every document is read, or at its share if they read slower than measured
        return Split(spent + share, steps)
    return Split(spent + left, 0)  # fine-tuning could do too little: reading gets everything


def plan_line(*, precision: str, device: str, tokens_per_second: float, planned: int, n_train: int,
              planned_tokens: int, budget: Budget, plan: Split, spent: float,
              valid: tuple[int, int] | None = None) -> str:
    """What the run will do, in one line, from the reading speed just measured (`spent`: seconds of reading so
    far, the validation documents: `valid` (read, all))."""
    what = (f"all {n_train:,} training documents whole" if planned >= n_train else
            f"a random {planned:,} of the {n_train:,} training documents, each whole")
    if valid is not None and valid[0] < valid[1]:
        what += f" (validation: a random {valid[0]:,} of its {valid[1]:,} documents)"
    speed = f"with the frozen encoder at {tokens_per_second:,.0f} tokens/s and fit the head"
    ngrams = f"n-grams fit first in {budget.ngrams / 60:.1f} min"
    if budget.total is None:
        return (f"txl train: plan ({precision} on {device}): {ngrams}; read {what} ({planned_tokens:,} tokens) "
                f"{speed} (~{planned_tokens / max(tokens_per_second, 1) / 60:.1f} min), then fine-tune for the "
                "epochs")
    reading = spent + planned_tokens / max(tokens_per_second, 1e-9)
    if plan.reading is not None:
        reading = min(reading, plan.reading)
    head = f"txl train: plan ({budget.total / 60:g} min, {precision} on {device}): {ngrams}; read {what} " \
           f"({planned_tokens:,} tokens) {speed} (~{reading / 60:.1f} min)"
    if not plan.steps:
        return head + f"; no fine-tuning: it would take fewer than {MIN_STEPS} steps in the time left"
    return head + f", then fine-tune for ~{(budget.left(reading) or 0.0) / 60:.1f} min (~{plan.steps:,} steps)"

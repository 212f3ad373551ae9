"""How `txl train --max-minutes` spends its budget: the n-gram stage's time set aside first, then reading with the
frozen encoder, then fine-tuning for what is left; and the one plan line that says so."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.model.ngrams import fit_limit

NGRAM_CHARS_PER_SECOND = 400_000  # the n-gram fit with characters, measured 0.45M/s (benchmarks/RESULTS.md)
NGRAM_FITS = 2.2  # the fit on the training split, the refit on both, and scoring the validation split
FROZEN_SHARE = 0.5  # of the budget left after the n-grams: reading and the head's fit, the rest fine-tuning
FINE_TUNE_COST = 9.0  # a token back-propagated costs about this many read (MiniLM, bf16 CPU: 21,600 vs ~2,300/s)


def ngram_seconds(n_chars: int, *, ngrams: str) -> float:
    """The n-gram stage's expected seconds for training and validation texts of `n_chars` characters."""
    if ngrams == "off":
        return 0.0
    return NGRAM_FITS * min(n_chars, fit_limit(ngrams == "fuse")) / NGRAM_CHARS_PER_SECOND


@dataclass(frozen=True)
class Budget:
    """Seconds for each stage; None everywhere when the run has no budget (the epochs decide)."""

    total: float | None
    ngrams: float

    @property
    def frozen(self) -> float | None:
        """The reading stage's allowance, validation reading included."""
        return None if self.total is None else max(0.0, FROZEN_SHARE * (self.total - self.ngrams))

    def fine_tune(self, spent: float) -> float | None:
        """What fine-tuning gets once `spent` seconds have gone to reading (None: no budget)."""
        return None if self.total is None else max(0.0, self.total - self.ngrams - spent)


def budget_of(max_minutes: float | None, n_chars: int, *, ngrams: str) -> Budget:
    total = None if max_minutes is None else 60.0 * max_minutes
    reserve = ngram_seconds(n_chars, ngrams=ngrams)
    if total is not None:
        reserve = min(reserve, 0.4 * total)  # a tiny budget still reads and fits something
    return Budget(total, reserve)


def plan_line(*, precision: str, device: str, tokens_per_second: float, planned: int, n_train: int,
              planned_tokens: int, budget: Budget, spent: float = 0.0) -> str:
    """What the run will do, in one line, from the reading speed just measured (`spent`: seconds of reading so
    far, the validation documents)."""
    if budget.total is None:
        return (f"txl train: plan ({precision} on {device}): read all {n_train:,} training documents whole "
                f"({planned_tokens:,} tokens) with the frozen encoder at {tokens_per_second:,.0f} tokens/s "
                f"(~{planned_tokens / max(tokens_per_second, 1) / 60:.1f} min), fit the head, then fine-tune "
                "for the epochs")
    what = (f"all {n_train:,} training documents whole" if planned >= n_train else
            f"a random {planned:,} of the {n_train:,} training documents, each whole")
    reading = min(budget.frozen or 0.0, spent + planned_tokens / max(tokens_per_second, 1e-9))
    left = budget.fine_tune(reading) or 0.0
    tuned = left * tokens_per_second / FINE_TUNE_COST
    return (f"txl train: plan ({budget.total / 60:g} min, {precision} on {device}): read {what} ({planned_tokens:,} "
            f"tokens) with the frozen encoder at {tokens_per_second:,.0f} tokens/s and fit the head "
            f"(~{reading / 60:.1f} min), then fine-tune for ~{left / 60:.1f} min (~{tuned:,.0f} tokens "
            f"back-propagated), n-grams ~{budget.ngrams / 60:.1f} min")

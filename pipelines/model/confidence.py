"""The low-confidence notice: a prediction less certain than the model's usual, measured against the model's own
validation documents when it was trained (or on documents a user gives, `txl evaluate --calibrate`).

Three signals, each compared with the validation documents':
    probability   the top class's probability                                       below its 5th percentile there
    words         the share of the document's words the n-gram vocabulary knows     below its 5th percentile there
    parts         the encoder and the n-grams pick different classes                where that is rare there (<= 10%)
A document with any signal gets the notice, with its reasons: it may lie outside the model's labels (a recipe
given to a news classifier), be in another language, or sit between two classes. `confidence.json` in the model
directory keeps the thresholds and what they meant on validation: the share of documents that got the notice and
the accuracy of those and of the rest. Single-label models only: a multi-label model's top probability says how
sure one label is, not whether the document belongs to the labels at all.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FILE = "confidence.json"
QUANTILE = 0.05  # a validation document gets the notice for each signal about this often
RARE_DISAGREEMENT = 0.10  # parts that disagree this often or less on validation make disagreement a signal


@dataclass
class Calibration:
    min_probability: float
    min_coverage: float | None  # None: the model has no n-grams
    disagreement_rate: float | None  # on validation; None: no n-grams
    n_documents: int
    flagged: float  # the share of the validation documents that got the notice
    accuracy_flagged: float | None  # None: none got it
    accuracy_rest: float | None
    source: str = "validation"  # what the documents measured were: "validation", or "calibration" (--calibrate)

    @property
    def parts_signal(self) -> bool:
        return self.disagreement_rate is not None and self.disagreement_rate <= RARE_DISAGREEMENT

    def reasons(self, probability: float, coverage: float | None = None, agree: bool | None = None) -> list[str]:
        """Why one prediction gets the notice (empty: it does not)."""
        out = []
        if probability < self.min_probability:
            out.append(f"top probability {_percent(probability)} is below what 95% of {self.source} documents got "
                       f"({_percent(self.min_probability)})")
        if self.min_coverage is not None and coverage is not None and not math.isnan(coverage) \
                and coverage < self.min_coverage:
            out.append(f"only {coverage:.0%} of its words are in the model's vocabulary (95% of {self.source} "
                       f"documents: {self.min_coverage:.0%} or more)")
        if self.parts_signal and agree is False:
            out.append(f"the encoder and the n-grams disagree (on {self.disagreement_rate:.0%} of {self.source} "
                       "documents)")
        return out

    def notice(self, probability: float, coverage: float | None = None, agree: bool | None = None) -> str:
        """One line for a prediction that gets the notice, "" otherwise."""
        reasons = self.reasons(probability, coverage, agree)
        if not reasons:
            return ""
        return "low confidence: " + "; ".join(reasons)

    def summary(self) -> str:
        """What the notice meant on validation, for the card and the app."""
        if self.accuracy_flagged is None:
            return f"no {self.source} document of {self.n_documents} got it"
        rest = "" if self.accuracy_rest is None else f", against {self.accuracy_rest:.0%} of the rest"
        return (f"{self.flagged:.0%} of {self.n_documents} {self.source} documents got it; "
                f"{self.accuracy_flagged:.0%} of those were classified right{rest}")

    def files(self) -> dict[str, str]:
        """{file name: content} for the model directory."""
        return {FILE: json.dumps(asdict(self), indent=1) + "\n"}

    @classmethod
    def load(cls, directory: Path) -> Calibration | None:
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (ValueError, KeyError, TypeError, OSError):
            return None  # a damaged file costs the notice, not the model


def _percent(p: float) -> str:
    """A probability as a percentage, with the digits that tell 99.2% from 99.97% apart."""
    if p < 0.99:
        return f"{p:.0%}"
    digits = min(6, max(1, -math.floor(math.log10(max(1 - p, 1e-12))) - 2))
    return f"{100 * p:.{digits}f}%"


def calibrate(probs: np.ndarray, truth: np.ndarray, coverage: np.ndarray | None = None,
              agree: np.ndarray | None = None, source: str = "validation") -> Calibration:
    """Thresholds from validation: `probs` (N, L) the model's probabilities, `truth` (N,) class indices,
    `coverage` (N,) the share of known words (NaN for a document without words), `agree` (N,) whether the parts
    pick the same class."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth)
    top = probs.max(1)
    min_probability = float(np.quantile(top, QUANTILE))
    min_coverage = None
    if coverage is not None and np.isfinite(coverage).any():
        min_coverage = float(np.quantile(coverage[np.isfinite(coverage)], QUANTILE))
    disagreement = None if agree is None else float(1.0 - np.mean(agree))
    # thresholds unrounded: a confident model's 5th percentile can be 0.9999996, which rounds to 1.0 (all flagged)
    cal = Calibration(min_probability, min_coverage, disagreement, len(top), 0.0, None, None, source)
    flagged = np.array([bool(cal.reasons(float(top[i]), None if coverage is None else float(coverage[i]),
                                         None if agree is None else bool(agree[i]))) for i in range(len(top))])
    right = probs.argmax(1) == truth
    cal.flagged = round(float(flagged.mean()), 6) if len(top) else 0.0
    cal.accuracy_flagged = round(float(right[flagged].mean()), 6) if flagged.any() else None
    cal.accuracy_rest = round(float(right[~flagged].mean()), 6) if (~flagged).any() else None
    return cal

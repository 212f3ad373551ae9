"""One example document per label, kept in the model directory (`examples.json`) for the app's landing page:
the validation document of each label that the model classifies right with the highest probability, preferring
documents short enough to read on a page. `txl train --no-examples` leaves the file out (it holds text of the
validation data: leave it out to share a model without it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILE = "examples.json"
SHORT_CHARS = 4_000  # an example this short is read on the page; a longer one is picked only when none is
MAX_CHARS = 60_000  # no example longer than this: the landing page stays light
MAX_TOTAL_CHARS = 1_000_000  # the file's size, whatever the number of labels (the first labels get theirs)


def pick(texts: list[str], truth: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, str]:
    """{label: text} for the labels that have a validation document the model classifies right."""
    probs, truth = np.asarray(probs), np.asarray(truth)
    right = probs.argmax(1) == truth
    out, total = {}, 0
    for k, name in enumerate(labels):
        rows = [i for i in np.flatnonzero(right & (truth == k)) if 0 < len(texts[i].strip()) <= MAX_CHARS]
        if not rows:
            continue
        best = max(rows, key=lambda i: (len(texts[i]) <= SHORT_CHARS, probs[i, k], -len(texts[i])))
        if total + len(texts[best]) > MAX_TOTAL_CHARS:
            break
        out[name] = texts[best].strip()
        total += len(texts[best])
    return out


def files(examples: dict[str, str] | None) -> dict[str, str]:
    return {FILE: json.dumps(examples, indent=1, ensure_ascii=False) + "\n"} if examples else {}


def load(directory: Path) -> dict[str, str]:
    """{label: text}; {} when the model has none (or the file is damaged)."""
    try:
        raw = json.loads((Path(directory) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str) and v.strip()} if isinstance(raw, dict) else {}

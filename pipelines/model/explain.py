"""Which parts of a document drove its prediction, by occlusion: a part's effect is how much the predicted class's
log-odds (log p - log(1 - p)) fall when that part is removed and the rest is read as if it had never been there.
Log-odds, not log-probability: they have the same sign, but a class predicted at 99.9% keeps a log-probability
near 0 whatever one part of a long document says, while its log-odds still show which parts hold it up.

A long document's parts are the encoder's segments (exact, at a bounded multiple of one reading:
txl_core/occlusion.py); a short one's (at most SHORT_TOKENS tokens) are its sentences, each removed in turn
and the rest read again (a one-sentence document's, its clauses or runs of words). With an n-gram part the fused
model is explained: the encoder's term by occlusion, the n-grams' by their own linear terms (each part's share of
every n-gram it holds, `NgramModel.span_contributions`: occluding a part would renormalise the document's tf-idf
vector and credit the part with what the others lose); each effect is split into those two terms of the fused
logit, which add up to the change of that logit.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipelines.data import token_ids
from pipelines.model.inference import _autocast, pooled_features
from pipelines.model.model_dir import ModelDir
from txl_core.occlusion import occlude_segments

SHORT_TOKENS = 600  # documents of at most this many tokens (about 450 words) are explained sentence by sentence
# (a one-sentence document phrase by phrase)
MAX_SENTENCES = 400  # a short document with more sentences than this is explained by segments
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*\n")


@dataclass(frozen=True)
class Influence:
    """Characters [start, end) of the text (a segment or a sentence); `effect`: the predicted class's log-odds
    with the whole text minus without this part (positive: the part supports the prediction); `log_prob`: the
    same for its log-probability (same sign); `encoder` and `ngrams`: the change of each term of the fused logit
    of that class, the encoder's with the part removed, the n-grams' the part's linear share (they add up to the
    change of the logit; `ngrams` is 0 without an n-gram part)."""

    start: int
    end: int
    effect: float
    log_prob: float
    encoder: float
    ngrams: float
    unit: str

    def rounded(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Explanation:
    label: str  # the class explained: the predicted one (multi-label: the most probable)
    parts: list[Influence]  # in document order
    reads: float  # what it cost, in readings of the whole document

    def top(self, k: int) -> list[Influence]:
        """The k parts of largest effect, either sign, most influential first."""
        return sorted(self.parts, key=lambda p: -abs(p.effect))[:k]

    def to_json(self, k: int) -> str:
        return json.dumps([p.rounded() for p in self.top(k)], ensure_ascii=False)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence, the whitespace after it included: the spans cover the text."""
    cuts = [0] + [m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]


_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
PHRASE_WORDS = 4  # a one-sentence text without commas is explained by runs of this many words


def phrase_spans(text: str) -> list[tuple[int, int]]:
    """A one-sentence text's parts: its clauses (cut after , ; :), else runs of PHRASE_WORDS words; the spans
    cover the text, the whitespace after each part included."""
    cuts = [0] + [m.end() for m in _CLAUSE_END.finditer(text) if 0 < m.end() < len(text)] + [len(text)]
    if len(cuts) <= 2:
        words = [m.start() for m in re.finditer(r"\S+", text)]
        cuts = [0] + words[PHRASE_WORDS::PHRASE_WORDS] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]


def segment_spans(offsets: np.ndarray, segment_len: int, n_chars: int) -> list[tuple[int, int]]:
    """[start, end) characters of each segment's tokens, widened to meet the next segment's first token: the
    spans cover the text."""
    n = len(offsets)
    starts = [0] + [int(offsets[s][0]) for s in range(segment_len, n, segment_len)]
    return list(zip(starts, starts[1:] + [n_chars]))


def explain(md: ModelDir, text: str, *, on_segment=None) -> Explanation | None:
    """The occlusion effects of the parts of `text` on its predicted class (`md` prepared; `on_segment(done,
    total)` after each segment of a long text); None for a text with
    no token or only whitespace (as `predict`)."""
    if not isinstance(text, str) or not text.strip():
        return None
    tokens = token_ids.encode(md.tokenizer, [text], offsets=True)[0]
    if not len(tokens):
        return None
    seg_len = md.model.config.segment_len
    n_segments = -(-len(tokens) // seg_len)
    spans, unit = (sentence_spans(text), "sentence") if len(tokens) <= SHORT_TOKENS else ([], "segment")
    if len(tokens) <= SHORT_TOKENS and len(spans) <= 1:  # one sentence: its clauses, or runs of words
        spans, unit = phrase_spans(text), "phrase"
    if 1 < len(spans) <= MAX_SENTENCES:
        reads = len(spans) + 1.0
        variants = [text[:a] + text[b:] for a, b in spans]  # what the encoder reads without each part
        ids = [tokens.ids] + [e.ids if len(e) else np.zeros(0, np.int32) for e in
                              token_ids.encode(md.tokenizer, variants)]
        encoder = _encoder_logits(md, ids)
    else:
        unit = "segment"
        spans = segment_spans(tokens.offsets, seg_len, len(text))
        model = md.model
        with torch.inference_mode(), _autocast(md):
            out = occlude_segments(model, torch.as_tensor(tokens.ids, dtype=torch.long, device=md.device),
                                   on_segment=on_segment)
        encoder = torch.cat([out.logits[None], out.occluded]).float().cpu()
        reads = out.segment_reads / n_segments
    scores = None
    if md.ngram is not None:  # the n-grams by their own linear terms: each part's share taken off the scores
        whole = md.ngram.scores([text])
        scores = torch.as_tensor(np.concatenate([whole, whole - md.ngram.span_contributions(text, spans)]))
    target, effect, log_prob, enc_term, ngram_term = _effects(md, encoder, scores)
    parts = [Influence(a, b, float(e), float(lp), float(x), float(y), unit)
             for (a, b), e, lp, x, y in zip(spans, effect, log_prob, enc_term, ngram_term)]
    return Explanation(md.labels[target], parts, reads)


def _encoder_logits(md: ModelDir, ids: list[np.ndarray]) -> torch.Tensor:
    """The encoder's logits (N, K) of token ids; a text with no token gets the head's bias alone."""
    keep = [i for i, x in enumerate(ids) if len(x)]
    pooled = np.zeros((len(ids), md.model.config.d_model), dtype=np.float32)
    if keep:
        pooled[keep] = pooled_features(md, [ids[i] for i in keep])
    head = md.model.head
    return torch.from_numpy(pooled) @ head.weight.detach().float().cpu().T + head.bias.detach().float().cpu()


def _effects(md: ModelDir, encoder: torch.Tensor, scores: torch.Tensor | None):
    """From the logits (1 + P, K) of the text and of its P occluded variants: the class explained, and per part
    its effect on that class's log-probability and the changes of the fused logit's two terms."""
    multi = md.multi_label
    if scores is None:
        logits, enc_term, ngram_term = encoder, encoder, torch.zeros_like(encoder)
    else:
        w = md.ngram.fusion
        enc_term = w["a"] * (encoder if multi else torch.log_softmax(encoder, dim=-1))
        ngram_term = w["b"] * scores.float()
        logits = md.ngram.fuse(encoder, scores.numpy())
    logits = logits.double()
    log_p = torch.nn.functional.logsigmoid(logits) if multi else torch.log_softmax(logits, dim=-1)
    target = int(log_p[0].argmax())
    if multi:
        odds = logits[:, target]
    else:  # log p_t - log(sum of the others' p)
        others = torch.cat([log_p[:, :target], log_p[:, target + 1:]], dim=1)
        odds = log_p[:, target] - (torch.logsumexp(others, dim=1) if others.size(1) else 0.0)
    return (target, (odds[0] - odds[1:]).tolist(), (log_p[0, target] - log_p[1:, target]).tolist(),
            (enc_term[0, target] - enc_term[1:, target]).tolist(),
            (ngram_term[0, target] - ngram_term[1:, target]).tolist())


def explanation(md: ModelDir, text: str, k: int) -> str:
    """The `explanation` column of `txl classify --explain K` and `txl evaluate --explain K`: the K most
    influential parts as JSON ("[]" for a text without tokens)."""
    out = explain(md, text)
    return "[]" if out is None else out.to_json(k)

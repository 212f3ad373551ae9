"""The one configuration object of a Transformer-XL model, validated, saved as JSON beside the weights.

Field names follow Hugging Face's `TransfoXLConfig` (transformers 4.37.2) so that a reference
`config.json` loads as is; the classification fields are this project's own.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

POOLINGS = ("mean", "max", "attention", "last")
ACTIVATIONS = ("relu", "gelu")

# Keys a Hugging Face transfo-xl config.json carries that have no effect on the model's math.
_HF_INERT = {
    "adaptive", "architectures", "attn_type", "sample_softmax", "tgt_len", "ext_len", "init", "init_range",
    "model_type", "torch_dtype", "transformers_version", "proj_share_all_but_first", "return_dict",
    "output_hidden_states", "output_attentions", "id2label", "label2id", "problem_type",
}


@dataclass
class TXLConfig:
    """Hyper-parameters of the encoder, the LM head and the document classifier.

    Defaults are the reference's (the `transfo-xl-wt103` shape). Glossary: `mem_len` = M, the memory kept per
    layer; `clamp_len` = the largest relative distance with its own position embedding (<= 0: none);
    `same_length` = every query sees the same number of keys; `untie_r` = per-layer position biases.
    """

    vocab_size: int = 267735
    d_model: int = 1024
    d_embed: int = 1024
    n_head: int = 16
    d_head: int = 64
    d_inner: int = 4096
    n_layer: int = 18
    cutoffs: list[int] = field(default_factory=lambda: [20000, 40000, 200000])
    div_val: int = 4
    tie_projs: list[bool] | None = None  # None: [False] + [True] * len(cutoffs), the reference's default
    tie_word_embeddings: bool = True
    pre_lnorm: bool = False
    mem_len: int = 1600
    clamp_len: int = 1000
    same_length: bool = True
    untie_r: bool = True
    dropout: float = 0.1
    dropatt: float = 0.0
    layer_norm_epsilon: float = 1e-5
    # Not in the reference: a BERT-family encoder mapped onto these layers (pipelines/training/starts.py) needs
    # GELU and biased q/k/v/output projections. The defaults are the reference's.
    ff_activation: str = "relu"
    attn_bias: bool = False
    # Not in the reference: within a segment every token also sees the segment's later tokens (the memory
    # is the past either way). For classifiers only: a language model would see the tokens it predicts.
    bidirectional: bool = False
    # Not in the reference: > 0 adds a learned absolute position (0 ... segment_positions - 1, counted from the
    # start of each segment) to every token embedding, then a LayerNorm, as BERT's input is; a BERT-family start
    # keeps the positions it was trained with, and the memory's distance is still told by the relative encoding.
    segment_positions: int = 0
    init_std: float = 0.02
    proj_init_std: float = 0.01
    eos_token_id: int = 0
    pad_token_id: int | None = None
    # Document classifier (num_labels == 0: no classifier).
    num_labels: int = 0
    labels: list[str] = field(default_factory=list)
    multi_label: bool = False
    pooling: str = "mean"
    segment_len: int = 256
    classifier_dropout: float = 0.1
    # Multi-label: per-label decision thresholds on the sigmoid probabilities, tuned on validation data by
    # `txl train` (None: 0.5 for every label).
    thresholds: list[float] | None = None

    def __post_init__(self):
        self.cutoffs = [int(c) for c in self.cutoffs]
        if self.tie_projs is None:
            self.tie_projs = [False] + [True] * len(self.cutoffs)
        self.tie_projs = [bool(t) for t in self.tie_projs]
        if self.labels and not self.num_labels:
            self.num_labels = len(self.labels)
        self._validate()

    def _validate(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"invalid TXLConfig: {message}")

        for name in ("vocab_size", "d_model", "d_embed", "n_head", "d_head", "d_inner", "n_layer", "div_val"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.mem_len >= 0, f"mem_len must be >= 0, got {self.mem_len}")
        need(self.segment_len > 0, f"segment_len must be positive, got {self.segment_len}")
        need(self.segment_positions >= 0, f"segment_positions must be >= 0, got {self.segment_positions}")
        need(not self.segment_positions or self.segment_len <= self.segment_positions,
             f"segment_len={self.segment_len} exceeds the {self.segment_positions} learned segment positions")
        need(self.cutoffs == sorted(set(self.cutoffs)) and all(0 < c < self.vocab_size for c in self.cutoffs),
             f"cutoffs must increase strictly inside (0, vocab_size={self.vocab_size}), got {self.cutoffs}")
        need(len(self.tie_projs) == len(self.cutoffs) + 1,
             f"tie_projs needs {len(self.cutoffs) + 1} entries (one per cluster), got {len(self.tie_projs)}")
        need(self.d_embed // self.div_val ** len(self.cutoffs) > 0 or self.div_val == 1,
             f"d_embed={self.d_embed} is too small for div_val={self.div_val} over {len(self.cutoffs) + 1} clusters")
        need(0.0 <= self.dropout < 1.0 and 0.0 <= self.dropatt < 1.0, "dropout and dropatt must be in [0, 1)")
        need(self.ff_activation in ACTIVATIONS, f"ff_activation must be one of {ACTIVATIONS}, got {self.ff_activation!r}")
        need(not (self.bidirectional and self.same_length),
             "bidirectional attention needs same_length=False (same_length limits how far back a causal query sees)")
        need(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        need(not self.labels or len(self.labels) == self.num_labels,
             f"{len(self.labels)} label names for num_labels={self.num_labels}")
        need(self.thresholds is None or (len(self.thresholds) == self.num_labels
                                         and all(0.0 < t < 1.0 for t in self.thresholds)),
             f"thresholds needs one value in (0, 1) per label ({self.num_labels}), got {self.thresholds}")

    @property
    def n_clusters(self) -> int:
        return len(self.cutoffs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TXLConfig":
        """Build from this project's dict or a Hugging Face transfo-xl config dict (inert keys dropped)."""
        d = dict(d)
        if "id2label" in d and "labels" not in d and d.get("architectures", [""])[0].endswith("Classification"):
            d["labels"] = [d["id2label"][str(i)] for i in range(len(d["id2label"]))]
        if "tgt_len" in d and "segment_len" not in d:  # the reference's training segment length
            d["segment_len"] = d["tgt_len"]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - _HF_INERT
        if d.get("model_type") == "transfo-xl":  # a reference config also carries generic HF keys
            unknown = set()
        if unknown:
            raise ValueError(f"invalid TXLConfig: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TXLConfig":
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> "TXLConfig":
        return cls.from_json(Path(directory, "config.json").read_text())

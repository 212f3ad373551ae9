"""A classifier's model directory, the unit of exchange between `txl train`, `txl classify` and the app.

    config.json        TXLConfig (labels included)        model.safetensors   the weights
    tokenizer.json     the subword tokenizer               labels.json         label names, in logit order
    README.md          the model card                      metrics.json        measured validation/test metrics
    ngram.json, ngram.safetensors   the n-gram component fused with the encoder, when trained with one
    confidence.json    the low-confidence notice's thresholds, measured on validation (pipelines/model/confidence.py)
    examples.json      one validation document per label, for the app's landing page (pipelines/model/examples.py)

Files are written whole (temporary name, then rename), `config.json` last, so a directory never holds new
weights with an old config.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from pipelines.data.word_tokenizer import load_tokenizer
from pipelines.errors import UserError
from pipelines.model.confidence import FILE as CONFIDENCE_FILE
from pipelines.model.confidence import Calibration
from pipelines.model.examples import FILE as EXAMPLES_FILE
from pipelines.model.examples import files as example_files
from pipelines.model.examples import load as load_examples
from pipelines.model.ngrams import FILES as NGRAM_FILES
from pipelines.model.ngrams import NgramModel
from txl_core import CheckpointError, load_pretrained
from txl_core.classifier import TXLDocumentClassifier

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class ModelDir:
    model: TXLDocumentClassifier
    tokenizer: Tokenizer
    labels: list[str]
    card: str = ""
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    precision: str = "float32"  # set by inference.prepare
    device: object = None
    ngram: NgramModel | None = None  # fused with the encoder's logits (pipelines/model/ngrams.py)
    confidence: Calibration | None = None  # the low-confidence notice's thresholds (pipelines/model/confidence.py)
    examples: dict[str, str] = field(default_factory=dict)  # {label: an example text} (pipelines/model/examples.py)

    @property
    def multi_label(self) -> bool:
        return self.model.config.multi_label


def save_model_dir(directory: str | Path, md: ModelDir) -> None:
    directory = Path(directory)
    extra = {"tokenizer.json": md.tokenizer.to_str(), "labels.json": json.dumps(md.labels, indent=1) + "\n",
             "README.md": md.card, "metrics.json": json.dumps(md.metrics, indent=1, sort_keys=True) + "\n"}
    if md.confidence is not None:
        extra.update(md.confidence.files())
    else:  # thresholds measured for another model would mislead
        (directory / CONFIDENCE_FILE).unlink(missing_ok=True)
    extra.update(example_files(md.examples))
    if not md.examples:  # another model's examples would mislead
        (directory / EXAMPLES_FILE).unlink(missing_ok=True)
    if md.ngram is not None:
        extra.update(md.ngram.files())
    else:  # an encoder saved alone must not be read with an earlier run's n-grams
        for name in NGRAM_FILES:
            (directory / name).unlink(missing_ok=True)
    md.model.save_pretrained(directory, extra_files=extra)


def _check_config_is_object(path: Path) -> None:
    """txl_core reads config.json as a JSON object; a list or a number there would fail with an AttributeError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return  # not JSON at all: load_pretrained says so
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a JSON {type(raw).__name__}, not the model's settings (a JSON object); "
                        "restore it from the original model")


def _check_finite(model: torch.nn.Module, directory: Path) -> None:
    """safetensors has no checksum: bytes damaged inside the weights load silently. Damage often makes NaN or
    infinite floats, which would give NaN predictions for every document; refuse those here."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{directory}/model.safetensors is corrupted: {name} holds NaN or infinite values; "
                            "copy the model directory again")


def load_model_dir(directory: str | Path) -> ModelDir:
    """Load a classifier directory, with a one-line UserError for anything that is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"model directory {directory} does not exist; pass a folder made by `txl train`")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{directory} is not a classifier model directory: missing {', '.join(missing)}")
    _check_config_is_object(directory / "config.json")
    try:
        model = load_pretrained(directory)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    _check_finite(model, directory)
    if not isinstance(model, TXLDocumentClassifier):
        raise UserError(f"{directory} holds a {type(model).__name__}, not a classifier; "
                        "fine-tune it first with `txl train --init`")
    try:
        tokenizer = load_tokenizer(directory / "tokenizer.json")
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise UserError(f"{directory}/tokenizer.json is damaged ({str(e)[:120]}); copy the model again") from None
    if tokenizer.get_vocab_size() > model.config.vocab_size:  # fewer is allowed: a start may pad its embeddings
        raise UserError(f"{directory}: tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model "
                        f"only {model.config.vocab_size}; the files come from different models")
    labels = model.config.labels or [f"LABEL_{i}" for i in range(model.config.num_labels)]
    _check_labels(directory, labels)
    card = (directory / "README.md").read_text() if (directory / "README.md").is_file() else ""
    metrics_path = directory / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    ngram = NgramModel.load(directory)
    if ngram is not None and ngram.coef.shape[0] not in (len(labels), 1 if len(labels) == 2 else -1):
        raise UserError(f"{directory}: the n-gram component scores {ngram.coef.shape[0]} classes, the model "
                        f"{len(labels)}; the files come from different models")
    confidence = Calibration.load(directory) if not model.config.multi_label else None
    examples = {k: v for k, v in load_examples(directory).items() if k in labels}
    return ModelDir(model, tokenizer, labels, card, metrics, directory, ngram=ngram, confidence=confidence,
                    examples=examples)


def _check_labels(directory: Path, labels: list[str]) -> None:
    """Labels name the logits one to one: no repeats, and labels.json (when there) names the same ones."""
    repeated = sorted(y for y, n in Counter(labels).items() if n > 1)
    if repeated:
        raise UserError(f"{directory}/config.json repeats the label(s) {', '.join(map(repr, repeated))}; each logit "
                        "needs its own name: copy the model again")
    path = directory / "labels.json"
    try:
        listed = json.loads(path.read_text()) if path.is_file() else labels
    except (ValueError, UnicodeDecodeError):
        listed = None
    if listed != labels:
        raise UserError(f"{directory}: labels.json and config.json name different labels; the files come from "
                        "different models (or one was edited): copy the model again")


@dataclass
class LMDir:
    """A `txl pretrain` directory: the language model and its tokenizer."""

    model: object  # txl_core.TXLLMHeadModel
    tokenizer: Tokenizer
    metrics: dict = field(default_factory=dict)
    path: Path | None = None


def load_lm_dir(directory: str | Path) -> LMDir:
    """Load a language-model directory (`txl pretrain`), with a one-line UserError for anything else."""
    from txl_core import TXLLMHeadModel

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"model directory {directory} does not exist; pass a folder made by `txl pretrain`")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{directory} is not a language-model directory: missing {', '.join(missing)}")
    _check_config_is_object(directory / "config.json")
    try:
        model = load_pretrained(directory)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if not isinstance(model, TXLLMHeadModel):
        raise UserError(f"{directory} holds a {type(model).__name__}, not a language model (`txl pretrain`)")
    _check_finite(model, directory)
    try:
        tokenizer = load_tokenizer(directory / "tokenizer.json")
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise UserError(f"{directory}/tokenizer.json is damaged ({str(e)[:120]}); copy the model again") from None
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise UserError(f"{directory}: tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model "
                        f"only {model.config.vocab_size}; the files come from different models")
    metrics_path = directory / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return LMDir(model, tokenizer, metrics, directory)

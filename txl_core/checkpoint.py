"""Model directories: `config.json` + `model.safetensors`, this project's or a Hugging Face transfo-xl one.

Nothing here unpickles code: weights come through safetensors, or `torch.load(weights_only=True)` for a
reference `pytorch_model.bin`. Models are built on the meta device and take the loaded tensors as their
parameters (`assign=True`), so loading needs little more memory than the weights themselves.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .classifier import TXLDocumentClassifier
from .config import TXLConfig
from .embedding import PositionalEmbedding
from .lm_head import TXLLMHeadModel
from .model import TXLModel
from .saving import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model directory: config.json is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it from the original model") from None


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of the first weight file present, read without executing any code."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(str(path))
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # safetensors and torch raise several types for damaged files
            raise CheckpointError(_unreadable(path, e)) from None
    raise CheckpointError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _unreadable(path: Path, e: Exception) -> str:
    """Why a weight file was refused: a pickle that holds more than tensors (code or Python objects, never
    loaded), or damage."""
    with open(path, "rb") as f:
        head = f.read(2)
    if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
        return (f"{path} is a pickle that holds code or Python objects beside its tensors; those are never loaded "
                "(only plain tensors are read). Use a model saved by txl, or convert the file to safetensors where "
                "you trust its source")
    if path.suffix == ".safetensors" and (head == b"PK" or head[:1] == b"\x80"):
        return (f"{path} is a pickle (torch.save) file, not safetensors; a pickle can hold code, so it is never "
                "loaded under this name. Use a model saved by txl")
    return f"{path} is damaged or truncated ({type(e).__name__}); copy the model directory again"


def _architecture(config: dict, state: dict) -> str:
    arch = (config.get("architectures") or [""])[0]
    if arch:
        return arch
    if any(k.startswith("crit.") for k in state):
        return "TXLLMHeadModel"
    return "TXLModel" if any(k.startswith("layers.") for k in state) else "TXLLMHeadModel"


def _model_class(arch: str):
    classes = {"TransfoXLLMHeadModel": TXLLMHeadModel, "TXLLMHeadModel": TXLLMHeadModel,
               "TransfoXLModel": TXLModel, "TXLModel": TXLModel,
               "TransfoXLForSequenceClassification": TXLDocumentClassifier,
               "TXLDocumentClassifier": TXLDocumentClassifier}
    if arch not in classes:
        raise CheckpointError(f"unsupported architecture {arch!r}; expected one of {sorted(classes)}")
    return classes[arch]


def _rename_reference(state: dict, model, config: TXLConfig) -> dict:
    """Map reference key names onto ours: drop buffers and per-layer aliases of shared biases, restore ties."""
    state = {k: v for k, v in state.items() if not k.endswith("pos_emb.inv_freq")}
    if not config.untie_r:
        state = {k: v for k, v in state.items() if not k.endswith(("dec_attn.r_w_bias", "dec_attn.r_r_bias"))}
    if "score.weight" in state:  # the reference's sequence classifier: an unbiased head on the last token
        state["head.weight"] = state.pop("score.weight")
        state.setdefault("head.bias", torch.zeros(state["head.weight"].size(0)))
    for a, b in getattr(model, "tied_pairs", lambda: [])():
        if a not in state and b in state:
            state[a] = state[b]
        elif b not in state and a in state:
            state[b] = state[a]
    return state


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Non-persistent buffers are not in the weights: rebuild the ones that stayed on the meta device."""
    for module in model.modules():
        if isinstance(module, PositionalEmbedding) and module.inv_freq.is_meta:
            module.register_buffer("inv_freq", PositionalEmbedding(module.inv_freq.numel() * 2).inv_freq,
                                   persistent=False)


def _check_against_weights(directory: Path, config: TXLConfig, state: dict) -> None:
    """config.json's layer count and width against the weights', before a model is built: a config that does not
    belong to the weights (n_layer 1,000,000, d_model 10^9) would otherwise build for minutes or allocate
    gigabytes before the weights are compared."""
    layers = {int(m.group(1)) for k in state if (m := re.search(r"(?:^|\.)layers\.(\d+)\.", k))}
    if layers and config.n_layer != len(layers):
        raise CheckpointError(f"{directory}: the weights do not match config.json (it says n_layer {config.n_layer}, "
                              f"the weights hold {len(layers)} layers); copy the model again")
    norms = [t for k, t in state.items() if k.endswith("layer_norm.weight") and t.dim() == 1]
    if norms and norms[0].numel() != config.d_model:
        raise CheckpointError(f"{directory}: the weights do not match config.json (it says d_model {config.d_model}, "
                              f"the weights are {norms[0].numel()} wide); copy the model again")


def load_pretrained(path: str | Path, *, dtype: torch.dtype | None = None):
    """Load any supported model directory and return the matching model in eval mode.

    Returns a `TXLLMHeadModel`, `TXLModel` or `TXLDocumentClassifier`, chosen from `config.json`'s
    `architectures` (or the weight names when it has none).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the folder holding config.json")
    raw = read_config(directory)
    try:
        config = TXLConfig.from_dict({k: v for k, v in raw.items() if k != "format"})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from None
    state = read_weights(directory)
    _check_against_weights(directory, config, state)
    cls = _model_class(_architecture(raw, state))
    with torch.device("meta"):
        model = cls(config)
    state = _rename_reference(state, model, config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:3]
        raise CheckpointError(f"{directory}: the weights do not match config.json ({' '.join(first)[:300]})") from None
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    _materialize_buffers(model)
    if dtype is not None:
        model.to(dtype)
    return model.eval()

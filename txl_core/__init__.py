"""txl_core: Transformer-XL (Dai et al. 2019) in PyTorch, numerically equal to the reference
(Hugging Face transfo-xl, transformers 4.37.2), plus a whole-document classifier.

Files, one mechanism each: `config` (TXLConfig), `embedding` (adaptive input + relative sinusoids),
`attention` (relative multi-head attention, rel_shift, masks), `layer` (decoder layer), `memory` (segment
recurrence), `model` (encoder), `adaptive_softmax` + `lm_head` (language model), `pooling` + `classifier`
(document classification), `checkpoint` (model directories), `safe_pickle` + `word_vocab` (the reference's
word vocabularies, read without unpickling code).
"""
from .checkpoint import CheckpointError, load_pretrained
from .config import TXLConfig
from .lm_head import TXLLMHeadModel, TXLLMOutput
from .memory import empty_mems, reference_mems, update_mems
from .model import TXLModel, TXLOutput
from .safe_pickle import safe_load
from .word_vocab import WordTokenizer

__all__ = [
    "CheckpointError", "TXLConfig", "TXLLMHeadModel", "TXLLMOutput", "TXLModel", "TXLOutput",
    "WordTokenizer", "empty_mems", "load_pretrained", "reference_mems", "safe_load", "update_mems",
]

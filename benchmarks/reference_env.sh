#!/usr/bin/env bash
# Creates (idempotently) the REFERENCE venv at <repo>/.refenv: Hugging Face transformers 4.37.2 (the last
# release whose TransfoXL runs unpatched) on the CPU build of torch 2.13.0. It exists only to generate
# golden files (benchmarks/make_reference_goldens.py); it is never a dependency of the product, whose own
# venv (.venv) must not import transformers.
#
#   bash benchmarks/reference_env.sh            # create / complete .refenv, then smoke-test it
#   REFENV=/elsewhere bash benchmarks/reference_env.sh
#
# torch: only a CPU build is accepted. The CPU wheel (torch-2.13.0+cpu) is picked up from pip's find-links
# (this machine's /opt/wheels); if none is available the script stops instead of letting pip fall back to
# the multi-GB CUDA build on PyPI. Set REFENV_TORCH_SPEC to override (e.g. "torch==2.13.0+cpu" from a
# CPU index you configured yourself).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${REFENV:-$ROOT/.refenv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${REFENV_TORCH_SPEC:-torch==2.13.0+cpu}"
STAMP_WANT="torch=$TORCH_SPEC transformers==4.37.2 sacremoses safetensors numpy v1"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)

if [ "$(cat "$VENV/.refenv-stamp" 2>/dev/null)" != "$STAMP_WANT" ]; then
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') and torch.version.cuda is None else 1)" 2>/dev/null; then
    # An explicit local version label (+cpu) exists only as a CPU wheel, so pip cannot substitute a CUDA build.
    if ! "${pip[@]}" install -q "$TORCH_SPEC"; then
      echo "reference_env.sh: could not install '$TORCH_SPEC' (no CPU wheel found; see pip's find-links)." >&2
      echo "  Refusing to fall back to a CUDA build. Set REFENV_TORCH_SPEC to a CPU build you can reach." >&2
      exit 1
    fi
  fi
  # torch is already satisfied, so nothing below can replace it (transformers does not depend on torch).
  "${pip[@]}" install -q "transformers==4.37.2" sacremoses safetensors numpy
  echo "$STAMP_WANT" > "$VENV/.refenv-stamp"
fi

# Smoke test: CPU torch, the deprecated TransfoXL classes import, and a tiny forward pass runs.
"$VENV/bin/python" - <<'EOF'
import warnings
warnings.simplefilter("ignore")
import torch, transformers
from transformers import TransfoXLConfig, TransfoXLModel, TransfoXLLMHeadModel
assert torch.version.cuda is None, f"reference venv has a CUDA torch build: {torch.__version__}"
torch.manual_seed(0)
cfg = TransfoXLConfig(vocab_size=100, cutoffs=[20, 50], d_model=16, d_embed=16, n_head=2, d_head=8,
                      d_inner=32, n_layer=2, mem_len=8, div_val=2)
m = TransfoXLLMHeadModel(cfg).eval()
ids = torch.randint(0, 100, (2, 8))
with torch.no_grad():
    o = m(ids)
    o2 = m(ids, mems=o.mems, labels=ids)
assert o.prediction_scores.shape == (2, 8, 100) and len(o.mems) == 2 and torch.isfinite(o2.loss)
print(f"refenv ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"TransfoXLModel/TransfoXLLMHeadModel import, forward ok (loss {o2.loss.item():.4f})")
EOF

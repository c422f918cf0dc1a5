#!/usr/bin/env bash
# Set up, then run the main job on the embedded default (bundled MiniLM, GLUE STS-B from ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec synprune sweep --out runs/sweep "$@"

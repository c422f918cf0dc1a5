#!/usr/bin/env bash
# Wall time of the main job (`synprune sweep`, the default) on this machine, from a cold cache (no parses, no
# dense evaluation cached), with the sweep's own stage breakdown; then, if BEFORE_DIR is given, whether its
# results are identical to that earlier sweep's (benchmarks/compare_sweeps.py).
#
#   flock /tmp/synprune-heavy.lock bash benchmarks/sweep_time.sh OUT_DIR RESULT_FILE [BEFORE_DIR]
#
# Run it under the shared lock (the machine is then as quiet as it gets) from the checkout being measured.
set -euo pipefail
out=${1:?OUT_DIR}
file=${2:?RESULT_FILE}
before=${3:-}
py=${PYTHON:-python}
cache=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$cache" "$log"' EXIT
{
  echo "synprune sweep --out $out (the default), commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%FT%TZ)"
  echo "cold cache: SYNPRUNE_CACHE=$cache"
  SYNPRUNE_CACHE=$cache /usr/bin/time -v "$py" -m synprune sweep --out "$out" >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
  tr '\r' '\n' <"$log" | sed -n '/^sweep stages/,$p' | grep -vE "^\s*(Average|Exit|File|Major|Minor|Page|Signals|Socket|Swaps|Voluntary|Involuntary)" || true
  if [ -n "$before" ]; then
    echo
    echo "results against $before:"
    "$py" benchmarks/compare_sweeps.py "$before" "$out" || true
  fi
} | tee "$file"

#!/usr/bin/env bash
# Fine-tune the bundled MiniLM on SST-2, CoLA, MRPC and STS-B with the default options, one after another
# (each uses every core), into the task-model cache (SYNPRUNE_CACHE, default ~/.cache/synprune).
# Rerunning skips finished models and resumes an interrupted one from its checkpoint.
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for task in ${TASKS:-sst2 cola mrpc stsb}; do
  echo "== $task $(date -Is)"
  start=$(date +%s)
  synprune finetune --task "$task" --no-progress "$@"
  echo "== $task wall $(( $(date +%s) - start )) s"
done

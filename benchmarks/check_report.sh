#!/usr/bin/env bash
# Render a sweep's report.html in headless Chromium and save a screenshot to look at.
#   benchmarks/check_report.sh [SWEEP_DIR] [SCREENSHOT.png]
# Without SWEEP_DIR, runs a small SAP sweep on the bundled MiniLM first (calibration 64, sparsities 0.25-0.75).
# Needs `chromium` or `chromium-headless-shell` (scripts/setup.sh installs the latter where it is missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-}"
shot="${2:-report-screenshot.png}"
browser="$(command -v chromium || command -v chromium-headless-shell || true)"
[[ -n "$browser" ]] || { echo "chromium not found: apt-get install -y chromium-headless-shell" >&2; exit 2; }
if [[ -z "$dir" ]]; then
  dir="$(mktemp -d)/sweep"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" \
    python -m synprune.cli sweep --methods sap --calib-size 64 --grid k=3,5,7 --out "$dir" -q
fi
[[ -f "$dir/report.html" ]] || { echo "$dir/report.html not found" >&2; exit 2; }
if grep -Eq '(src|href)="(http|//)|https?:|url\(' "$dir/report.html"; then
  echo "report.html references an external resource" >&2; exit 1
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --screenshot="$shot" --window-size=1400,3000 \
  "file://$(cd "$dir" && pwd)/report.html" 2>/dev/null
echo "screenshot of $dir/report.html: $shot"

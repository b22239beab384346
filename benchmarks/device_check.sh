#!/usr/bin/env bash
# One short run that tells everything an accelerator can: versions, training steps of every
# method in fp32 / bf16 / fp16+scaler at the paper setting, torchrun + DDP, CAM inference, and
# with the time left the real sample at a longer budget. One table at the end.
#   bash benchmarks/device_check.sh            # GPU machine, at most ~8 minutes, no network
#   bash benchmarks/device_check.sh --cpu      # the same checks, tiny, on the CPU (CI runs it)
# Options go to benchmarks.device_check (--out DIR, --budget-s S, --real, --data DIR).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
# From the checkout: its src/ (a machine that never pip-installed it) and the benchmarks package.
cd "$root"
export PYTHONPATH="$root/src:$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m benchmarks.device_check "$@"

#!/bin/bash
# The fine-grid verdict's continue arm on a CPU, in the order that lets each run start as soon as
# what it needs exists: per baseline and seed, the coarse scratch baseline (runs/verdict_coarse),
# then its two fine continue runs, baseline losses only and with PLDA added (runs/verdict_fine).
# The CAM family goes first over all seeds: its steps are a quarter of SEAM's, so its paired
# three-seed comparison is finished first. Finished runs
# are skipped and an interrupted one resumes, so the script can be started again in any sitting.
# Each finished run's verdict.json and seeds_val.npz are copied into benchmarks/results/.
#
#   bash benchmarks/plda_verdict_fine.sh [CODE_DIR]
#
# CODE_DIR (default: this checkout) is the checkout whose code runs: a git worktree frozen at one
# commit keeps every run on the same code while the main checkout changes. Seeds, amp and the
# Python can be set with BASES="cam seam", SEEDS="0 1 2", AMP=none, PY=.venv/bin/python; REPO (where
# runs/ and benchmarks/results/ are) defaults to the checkout holding this script.
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
CODE=$(cd "${1:-$REPO}" && pwd)
PY=${PY:-$REPO/.venv/bin/python}
SEEDS=${SEEDS:-"0 1 2"}
BASES=${BASES:-"cam seam"}
AMP=${AMP:-none}
export PYTHONPATH=$CODE/src
cd "$CODE"
for base in $BASES; do
  for seed in $SEEDS; do
    "$PY" -m benchmarks.plda_verdict --out "$REPO/runs/verdict_coarse" --arms scratch \
      --methods "$base" --seeds "$seed" --amp "$AMP" --no-summary \
      --keep "$REPO/benchmarks/results/plda_verdict_fine/start"
    "$PY" -m benchmarks.plda_verdict --out "$REPO/runs/verdict_fine" --grid fine --arms continue \
      --methods "$base,${base}_plda" --seeds "$seed" --amp "$AMP" --no-summary \
      --start-from "$REPO/runs/verdict_coarse" --keep "$REPO/benchmarks/results/plda_verdict_fine"
  done
done
"$PY" -m benchmarks.plda_verdict --out "$REPO/benchmarks/results/plda_verdict_fine" --summary

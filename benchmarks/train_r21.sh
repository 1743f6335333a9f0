#!/usr/bin/env bash
# The three ReFusion task models of issue 21, one after another on one CPU thread each:
#   bash benchmarks/train_r21.sh            (from the repository root; runs/refusion-{mfif,mef,medical})
set -euo pipefail
export OMP_NUM_THREADS=1
for task in "$@"; do
  python -m metaloss run "examples/refusion_${task}.toml" --out "runs/refusion-${task}" --quiet
done

#!/usr/bin/env bash
# On a lent GPU machine (no package index), from the repository root with wheels/ carried along
# (python -m benchmarks.gpu_wheels made it here): install the wheels offline into a folder of their
# own, put the project first on PYTHONPATH and run python -m benchmarks.gpu_check (docs/gpu.md).
#
#   bash benchmarks/gpu_run.sh                      # every step; results in $OUT (or gpu_check/)
#   bash benchmarks/gpu_run.sh --steps tests meta   # arguments go to benchmarks.gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
wheels=${WHEELS:-wheels}
site=${SITE:-/tmp/metaloss-gpu-site}
out=${OUT:-gpu_check}
python=${PYTHON:-python3}

ls "$wheels"/*.whl >/dev/null || { echo "gpu_run: no wheels in $wheels (run python -m benchmarks.gpu_wheels)" >&2; exit 2; }
"$python" -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl
# the plugin packages under their import names, as an installed checkout has them
mkdir -p "$site/../metaloss-gpu-plugins"
plugins=$(cd "$site/../metaloss-gpu-plugins" && pwd)
ln -sfn "$root/plugins/tdfusion" "$plugins/metaloss_tdfusion"
ln -sfn "$root/plugins/refusion" "$plugins/metaloss_refusion"
export PYTHONPATH="$root:$plugins:$site${PYTHONPATH:+:$PYTHONPATH}"
export YOLO_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
"$python" -c "import torch, metaloss, pydantic; print('gpu_run: torch', torch.__version__, '| CUDA', torch.cuda.is_available(), '| metaloss from', metaloss.__file__)"
exec "$python" -m benchmarks.gpu_check --out "$out" "$@"

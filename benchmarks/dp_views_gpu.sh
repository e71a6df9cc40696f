#!/usr/bin/env bash
# DP-SGD augmentation multiplicity on one GPU: dp_sweep.py slices in parallel (non-private reference,
# epsilon 1/4/8 from the public start, epsilon 8 from scratch; each with dp_views 1, 4 and 8), then merged:
#
#   bash benchmarks/dp_views_gpu.sh DATA PUBLIC_DATA OUT_DIR [BUDGET_SECONDS]
#
# Writes OUT_DIR/dp_views_<kind>.json and dp_views.log. Each slice stops starting runs after BUDGET_SECONDS
# (default 300) and is killed 120 s later.
set -uo pipefail
data=${1:?DATA}; public=${2:?PUBLIC_DATA}; out=${3:?OUT_DIR}; budget=${4:-300}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo/src:$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
python="${PYTHON:-python3}"
slices=/tmp/dp_views_slices
mkdir -p "$out" "$slices"
common=(--data "$data" --public-data "$public" --public-epochs 12 --epochs 40 --clips 0.1 --time-budget "$budget")
slice() {  # name, then dp_sweep.py options
  local name=$1; shift
  timeout $((budget + 120)) "$python" "$repo/benchmarks/dp_sweep.py" "${common[@]}" --work "/tmp/dp_views/$name" \
    --out "$slices/$name" --name dp_views "$@" >"$slices/$name.log" 2>&1 &
}
slice public-0 --starts public --epsilons 0 --batch-sizes 16 --lrs 0.003
for eps in 1 4 8; do
  slice "public-$eps-k1" --starts public --epsilons "$eps" --batch-sizes 64 --lrs 0.003 0.01 --views 1
  slice "public-$eps-k48" --starts public --epsilons "$eps" --batch-sizes 64 --lrs 0.003 0.01 --views 4 8
done
slice scratch-8 --starts scratch --epsilons 8 --batch-sizes 64 --lrs 0.003 0.01 --views 1 4 8
wait
for log in "$slices"/*.log; do echo "==== $log"; cat "$log"; done >"$out/dp_views.log"
kind=$("$python" -c "import sys; sys.path[:0] = ['$repo/benchmarks']; import bench_common as c, torch; \
print(c.device_kind(c.resolve_device('auto')))" 2>/dev/null || echo unknown)
"$python" "$repo/benchmarks/dp_sweep.py" --merge "$slices"/*/dp_views_*.json --device "$kind" --name dp_views \
  --out "$out" | tee -a "$out/dp_views.log"

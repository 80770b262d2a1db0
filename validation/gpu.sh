#!/usr/bin/env bash
# The GPU checks in one command, on a machine with a GPU; the reports land in validation/<device>/:
#   1. the device tests (routers and executor on CUDA; they skip on a machine without one) -> tests.log
#   2. benchmarks/executor.py: the executor against bare kernels                               -> BENCHMARK.md
#   3. moesim validate --device cuda: the whole MoE layer on one GPU, simulator against executor -> REPORT.md
#   4. moesim.validation.serving_check: serving iterations of real decoder layers against IterationCost -> SERVING.md
#   5. moesim.validation.kernel_counts: the kernels each phase of the executor's layer launches -> kernel_counts.json
# About 6 minutes on one H100 or H200. Without a GPU it runs the same steps on the CPU, at small
# sizes (to try it first). Where PyTorch is installed but simpy, ortools or pydantic are not, the
# wheels in .whl/ are installed into a temporary folder first (docs/executor.md: "On a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! $PYTHON -c "import simpy, pydantic, ortools" 2>/dev/null; then
  if [ ! -d .whl ]; then
    echo "simpy, pydantic or ortools is missing and there is no .whl/ folder: see docs/executor.md, 'On a GPU'" >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/moesim-site"
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out=${MOESIM_OUT:-validation}
if $PYTHON -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  validate=(--device cuda)
else
  validate=(--single-device --quick)
fi
device=$($PYTHON -c "from moesim.validation.calibrate import device_name; import torch
print(device_name(torch.device('cuda' if torch.cuda.is_available() else 'cpu'), 1))")
mkdir -p "$out/$device"
status=0  # each step runs even if one before it failed; the exit status says whether all passed
echo "== device tests on $device"
$PYTHON -m pytest -q -p no:cacheprovider tests/test_routing_devices.py tests/test_fused_routing.py tests/test_executor.py tests/test_model_routers.py \
  2>&1 | tee "$out/$device/tests.log" || status=1
echo "== executor benchmark"
{ echo '```'; $PYTHON benchmarks/executor.py --out "$out/$device/benchmark-executor.json"; echo '```'; } \
  | tee "$out/$device/BENCHMARK.md" || status=1
echo "== single-device validation"
$PYTHON -m moesim validate "${validate[@]}" --out "$out" || status=1
echo "== serving iterations"
if [ "${validate[0]}" = "--device" ]; then serving=(); else serving=(--quick); fi
$PYTHON -m moesim.validation.serving_check "${serving[@]}" --out "$out" || status=1
echo "== kernels a phase"
$PYTHON -m moesim.validation.kernel_counts --out "$out" || status=1
exit $status

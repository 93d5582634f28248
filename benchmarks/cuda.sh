#!/usr/bin/env bash
# The project's GPU checks, for a machine with a CUDA GPU (CI has none), as one call that fits a
# GPU lease: the triton backend's tests, the kernels' tile sweep, the layer benchmark, profiles of a layer and of the
# attention stem, the model benchmark, then the backends' CUDA tests. Each part has a time limit
# of its own (seconds, below) so that one slow part cannot take the others' time. Needs torch,
# torchvision and pytest (timm for HaloAttn); runs from the source tree without installing the
# package. Results: benchmarks/results/*-cuda.json, also copied with the log to $OUT when set.
#   benchmarks/cuda.sh                      # every part
#   benchmarks/cuda.sh tiles layer          # some
#   MODEL_MODES=eager,compiled benchmarks/cuda.sh model
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
log=${OUT:-benchmarks/results}/cuda-log.txt
status=0
run() {  # run LIMIT_SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  echo "=== $name (at most ${limit}s) ===" | tee -a "$log"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name: exit $rc ===" | tee -a "$log"; status=1; }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$log"
"$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$log"
for part in ${@:-triton-tests tiles layer profile model tests}; do
  case $part in
    triton-tests) run 70 triton-tests "$python" -m pytest -q -p no:cacheprovider --no-header -rfE tests/test_triton.py ;;
    tiles) run 80 tiles "$python" benchmarks/triton_tiles.py ;;
    layer) run 120 layer "$python" benchmarks/layer.py --device cuda ;;
    profile) run 25 profile-layer "$python" benchmarks/profile_cuda.py --target layer
             run 25 profile-stem "$python" benchmarks/profile_cuda.py --target stem ;;
    model) run 90 model "$python" benchmarks/model.py --device cuda --steps 5 --modes "${MODEL_MODES:-eager}" ;;
    tests) run 130 tests "$python" -m pytest -q -p no:cacheprovider --no-header -rfE \
             tests/test_operator.py tests/test_layer.py tests/test_flex.py -k "cuda or triton or flex" ;;
    *) echo "cuda.sh: unknown part '$part'; expected triton-tests, tiles, layer, profile, model or tests" >&2
       exit 2 ;;
  esac
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*-cuda.json "$OUT"/ 2>/dev/null; fi
exit $status

#!/usr/bin/env bash
# The project's GPU checks, for a machine with a CUDA GPU (CI has none): the backends' CUDA
# tests, then the layer and model benchmarks on CUDA, each part on its own so that a short lease
# can run them one at a time. Needs torch, torchvision and pytest (timm for HaloAttn); runs from
# the source tree without installing the package. Results: benchmarks/results/*-cuda.json, also
# copied to $OUT when that is set.
#   benchmarks/cuda.sh tests layer model
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
status=0
for part in "${@:-tests layer model}"; do
  for step in $part; do
    case $step in
      tests) "$python" -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_flex.py tests/test_compiled.py tests/test_operator.py tests/test_layer.py -k "cuda or compiled or flex or triton" || status=1 ;;
      layer) "$python" benchmarks/layer.py --device cuda --repeats 5 || status=1 ;;
      model) "$python" benchmarks/model.py --device cuda --steps 5 || status=1 ;;
      *) echo "cuda.sh: unknown part '$step'; expected tests, layer or model" >&2; exit 2 ;;
    esac
  done
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*-cuda.json "$OUT"/ 2>/dev/null; fi
exit $status

#!/usr/bin/env bash
# Everything the GPU machine checks and measures, in one call, results under OUTDIR:
#   bash bench/gpu/run.sh OUTDIR
# 1. installs the carried wheels (.whl/, see fetch_wheels.sh) the machine lacks;
# 2. runs the correctness tests on CUDA (every CUDA implementation vs the float64 oracle;
#    the CPU emulation of the CUDA kernels is left to CI);
# 3. runs compute-sanitizer memcheck over a small forward + backward of cupy and cupy_fused;
# 4. runs the GPU benchmark sweep (paper table, forward/backward/train/stages) with CUDA
#    events, CUDA-graph kernel-only times, peak memory and the kernels that ran.
# Each step has its own time limit, so one hang cannot eat the whole lease; a step that
# fails is reported and the next one still runs.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu/run.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
status=0
step() { echo; echo "== $(date +%T) $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
    step "installing carried wheels"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
$PY -c "import torch, impls; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); \
print({n: impls.get(n).unavailable_reason('cuda') for n in impls.names() if 'cuda' in impls.get(n).devices})"

step "correctness tests on CUDA"
timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_correctness.py tests/test_contract.py tests/test_cupy.py \
    -k "not emulated" --junitxml "$OUT/tests.xml" > "$OUT/tests.log" 2>&1 || status=1
tail -n 5 "$OUT/tests.log"

step "compute-sanitizer memcheck: cupy and cupy_fused"
if command -v compute-sanitizer >/dev/null 2>&1; then
    timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 $PY bench/gpu/sanitize_cupy.py \
        > "$OUT/sanitizer.log" 2>&1 || status=1
    tail -n 5 "$OUT/sanitizer.log"
else
    echo "compute-sanitizer not found: skipped" | tee "$OUT/sanitizer.log"
fi

step "GPU benchmarks"
timeout "${BENCH_SECONDS:-330}" $PY -m bench run --preset "${BENCH_PRESET:-paper}" --device cuda \
    --direction forward,backward,train,stages --min-time "${BENCH_MIN_TIME:-0.15}" --baseline torch \
    --results "$OUT/gpu-paper.jsonl" > "$OUT/bench.log" 2>&1 || status=1
tail -n 60 "$OUT/bench.log"
echo; echo "== done, status $status; files in $OUT:"; ls -la "$OUT"
exit $status

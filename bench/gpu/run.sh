#!/usr/bin/env bash
# The GPU machine's whole programme, in stages, each writing its output under OUTDIR the
# moment it ends (a lease that runs out keeps every finished stage):
#   bash bench/gpu/run.sh OUTDIR            first pass: at most ~6 minutes on an H200
#   bash bench/gpu/run.sh OUTDIR --full     a longer second pass (every table and direction)
# Stages and their wall-clock budgets (first pass):
#   facts.txt      imports, versions, the device, each CUDA implementation's availability  (seconds)
#   tests.log      the correctness tests of every CUDA implementation vs the float64 oracle (90 s)
#   sanitizer.log  compute-sanitizer memcheck over a small forward + backward of cupy and
#                  cupy_fused (60 s; a refused device is recorded as the reason)
#   gpu-PASS.jsonl the sweep, each step's records as the step ends (the rest of 6 minutes, 4 at most):
#                  the goal layers forward and train, then their kernels (stages), torch.compile,
#                  then the paper table forward and train, backward and stages while time remains
#   bench.log      the sweep's output;  status.txt  each stage's exit status
# A pass is named by PASS (default: the UTC time it started), so two passes never share a
# file; within a pass the sweep's steps append to one file.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu/run.sh OUTDIR [--full]}
FULL=${2:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456
PY=${PYTHON:-python3}
PASS=${PASS:-$(date -u +%Y%m%dT%H%M%SZ)}
START=$(date +%s)
FIRST_PASS_SECONDS=${FIRST_PASS_SECONDS:-360}
RESULTS="$OUT/gpu-$PASS.jsonl"
: > "$OUT/status.txt"
stage() { echo; echo "== $(date -u +%T) $*"; }
note() { echo "$1 $2" >> "$OUT/status.txt"; }
left() { echo $(( FIRST_PASS_SECONDS - ($(date +%s) - START) )); }

if ls .whl/*.whl >/dev/null 2>&1; then
    stage "installing carried wheels (cffi, pycparser, asv)"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

stage "facts"
{
    echo "pass $PASS"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>&1
    timeout 60 $PY - <<'EOF'
import torch, impls
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "L2", getattr(p, "L2_cache_size", "?"), "memory", p.total_memory)
for name in impls.names():
    impl = impls.get(name)
    if "cuda" in impl.devices:
        print(f"{name:14} {impl.unavailable_reason('cuda') or 'available'}")
EOF
} > "$OUT/facts.txt" 2>&1
note facts $?
cat "$OUT/facts.txt"

stage "correctness tests on CUDA (90 s)"
timeout 90 $PY -m pytest -q -p no:cacheprovider -p no:randomly -rs tests/test_correctness.py tests/test_cupy.py \
    $(ls tests/test_triton.py 2>/dev/null) -k "cuda and not emulated" > "$OUT/tests.log" 2>&1
note tests $?
tail -n 5 "$OUT/tests.log"

stage "compute-sanitizer memcheck: cupy and cupy_fused (60 s)"
if command -v compute-sanitizer >/dev/null 2>&1; then
    timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 $PY bench/gpu/sanitize_cupy.py \
        > "$OUT/sanitizer.log" 2>&1
    code=$?
    if grep -q "Device not supported\|not supported on this" "$OUT/sanitizer.log"; then
        echo "compute-sanitizer refused the device: $(grep -m1 'not supported' "$OUT/sanitizer.log")" >> "$OUT/sanitizer.log"
    fi
    note sanitizer $code
else
    echo "compute-sanitizer is not on the PATH: not run" > "$OUT/sanitizer.log"
    note sanitizer missing
fi
tail -n 5 "$OUT/sanitizer.log"

# The sweep: each step is a sweep of its own (worker processes, rounds: bench/sweep.py)
# into a file of its own, appended to the pass's file when it ends; a step cut off by its
# time limit (SIGTERM) writes what its finished visits measured first.
STEPS=$(mktemp -d)
STEP=0
sweep() {  # sweep SECONDS ARGS...: one step, at most SECONDS and what the pass has left
    local budget=$1; shift
    local remaining; remaining=$(left)
    [ "$FULL" = "--full" ] && remaining=$budget
    [ "$remaining" -lt "$budget" ] && budget=$remaining
    if [ "$budget" -lt 10 ]; then echo "-- no time left for: $*" | tee -a "$OUT/bench.log"; return; fi
    echo "-- ${budget}s: $*" | tee -a "$OUT/bench.log"
    STEP=$((STEP + 1))
    timeout "$budget" $PY -m bench run --device cuda --baseline torch --solo 0 --results "$STEPS/$STEP.jsonl" "$@" \
        >> "$OUT/bench.log" 2>&1
    note "sweep:$*" $?
    [ -f "$STEPS/$STEP.jsonl" ] && cat "$STEPS/$STEP.jsonl" >> "$RESULTS"
}
registered() {  # the names in $1 that this version registers
    $PY -c "import impls, sys; print(','.join(n for n in sys.argv[1].split(',') if n in impls.names()))" "$1"
}
GPU_IMPLS=$(registered torch,cudnn,dense,im2col,cupy,cupy_fused,triton_fused)
stage "sweep, pass $PASS"
if [ "$FULL" = "--full" ]; then
    sweep 540 --preset goals,paper,sweep --direction forward,backward,train,stages --rounds 5 --passes 5
else
    QUICK="--rounds 3 --passes 3 --block 0.01 --rel-pi off"
    sweep 75 --preset goals --impl "$GPU_IMPLS" --direction forward,train $QUICK
    sweep 40 --preset goals --impl "$(registered torch,cupy,cupy_fused,triton_fused)" --direction stages $QUICK
    sweep 60 --preset goals --impl "$(registered torch,torch_compile,cupy_fused,triton_fused)" --direction forward $QUICK
    sweep 60 --preset paper --impl "$GPU_IMPLS" --direction forward,train --rounds 2 --passes 3 --block 0.005 --rel-pi off
    sweep 60 --preset paper --impl "$GPU_IMPLS" --direction backward,stages --rounds 2 --passes 3 --block 0.005 --rel-pi off
fi
tail -n 40 "$OUT/bench.log"
echo; echo "== done in $(( $(date +%s) - START )) s; status:"; cat "$OUT/status.txt"; ls -la "$OUT"

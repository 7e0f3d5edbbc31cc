#!/usr/bin/env bash
# Build impls/openmp with -fsanitize=address,undefined and run its tests under it.
#
#   bash impls/openmp/sanitize.sh [extra pytest args]
#
# The sanitized build goes to its own cache folder (FLATCONV_OPENMP_SANITIZE=1 selects it
# in impls/openmp/_ext.py); python runs with libasan preloaded, leak checking off (the
# interpreter itself "leaks" by design), and any ASan or UBSan report fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python}"
CC_="${CC:-gcc}"
export FLATCONV_OPENMP_SANITIZE=1
export FLATCONV_CACHE_DIR="${FLATCONV_CACHE_DIR:-${TMPDIR:-/tmp}/flatconv-sanitize-cache}"
unset FLATCONV_OPENMP_NO_BUILD

echo "== building the sanitized extension into $FLATCONV_CACHE_DIR"
"$PY" impls/openmp/_build.py --sanitize

ASAN_LIB="$("$CC_" -print-file-name=libasan.so)"
if [ ! -e "$ASAN_LIB" ]; then
    echo "sanitize.sh: $CC_ has no libasan.so" >&2
    exit 2
fi
export LD_PRELOAD="$ASAN_LIB${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo "== checking that the sanitized build is the one in use"
"$PY" - <<'PY'
import impls
impl = impls.get("openmp")
reason = impl.unavailable_reason("cpu")
assert reason is None, f"sanitized extension unavailable: {reason}"
origin = impl.runtime_info()["extension"]
assert "openmp-asan-" in origin, f"not the sanitized build: {origin}"
print("using", origin)
PY

echo "== tests/test_openmp.py under ASan + UBSan"
"$PY" -m pytest tests/test_openmp.py -q -p no:cacheprovider "$@"

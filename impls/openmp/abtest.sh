#!/usr/bin/env bash
# abtest.sh REV_A REV_B OP C N S k [batch [seconds]]
# The OpenMP kernels of two git revisions ("work": the working tree) built as the
# extension builds them and timed against each other in one process by abtest.c, e.g.
#   bash impls/openmp/abtest.sh HEAD work train 128 128 32 3
# Threads: OMP_NUM_THREADS (default: every core); glibc's allocator fixed as tox.ini fixes it;
# ABTEST_CFLAGS replaces -O3 (the extension's optimisation).
set -euo pipefail
[ $# -ge 7 ] || { echo "usage: abtest.sh REV_A REV_B OP C N S k [batch [seconds]]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
build() { # build REV DIR
    mkdir -p "$out/$2"
    for f in flatconv.c kernels.h flatconv_api.h; do
        if [ "$1" = work ]; then cp "$here/$f" "$out/$2/"; else git -C "$root" show "$1:impls/openmp/$f" > "$out/$2/$f"; fi
    done
    # shellcheck disable=SC2086 # ABTEST_CFLAGS is a list of flags
    "${CC:-cc}" ${ABTEST_CFLAGS:--O3} -fopenmp -std=gnu11 -shared -fPIC "$out/$2/flatconv.c" -o "$out/$2/lib.so"
}
build "$1" a
build "$2" b
"${CC:-cc}" -O2 -std=gnu11 "$here/abtest.c" -o "$out/abtest" -ldl
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} \
GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456} \
    "$out/abtest" "$out/a/lib.so" "$out/b/lib.so" "${@:3}"

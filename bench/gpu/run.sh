#!/usr/bin/env bash
# The GPU machine's whole programme (bench/gpu/programme.py; bench/gpu/README.md):
#   bash bench/gpu/run.sh OUTDIR                  first pass, by its deadline (default 360 s)
#   bash bench/gpu/run.sh OUTDIR --full           a longer second pass (default 540 s)
#   bash bench/gpu/run.sh OUTDIR --rehearse       the same stages, limits and files without a GPU
#   ... [--deadline SECONDS]                      one deadline for the pass; each stage its share
# Stages: facts (facts.txt), tests (tests.log), sanitizer:memcheck and :racecheck
# (sanitizer.log), sweep:STEP (gpu-PASS.jsonl, bench.log); status.txt names each with its
# exit status, seconds and `timed out` where its limit cut it. PASS names the pass.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu.programme "$@"

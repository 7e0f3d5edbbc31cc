#!/usr/bin/env bash
# Run HERE (with network) before a GPU call: downloads the wheels the GPU machine lacks
# (cffi, pycparser, asv and what asv needs at run time) for its Python 3.12 into .whl/,
# which the device call carries and bench/gpu/run.sh installs; and writes .commit, the
# commit the copied tree (which has no .git) records (bench/records.py, git_commit).
# Carry both: carry [".whl", ".commit"].
set -euo pipefail
cd "$(dirname "$0")/../.."
for ignored in /.whl/ /.commit; do
    grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
git rev-parse HEAD > .commit
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl cffi==2.0.0 pycparser asv asv-runner json5 tabulate pympler
ls -la .whl .commit

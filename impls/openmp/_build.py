"""cffi build script (out-of-line API mode) for the OpenMP kernels.

Used two ways:

* at install time, by setup.py's ``cffi_modules=["impls/openmp/_build.py:make_ffibuilder"]``
  (cffi executes this file without ``__file__``, from the project root), which builds
  ``impls.openmp._flatconv`` next to the sources;
* at run time, by ``impls.openmp._ext``, which rebuilds into a cache folder when that
  module is missing or was built from other sources (``build_in_cache``).

The build is portable: ``-O3 -fopenmp`` and no ``-march``; flatconv.c compiles its
kernels for baseline, AVX2+FMA and AVX-512 and picks one at run time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

try:
    HERE = os.path.dirname(os.path.abspath(__file__))
except NameError:  # executed by cffi's setuptools hook, from the project root
    HERE = os.path.abspath(os.path.join("impls", "openmp"))

MODULE = "impls.openmp._flatconv"
SOURCES = ("flatconv_api.h", "flatconv.c", "kernels.h")
COMPILE_ARGS = ["-O3", "-fopenmp", "-std=gnu11"]
LINK_ARGS = ["-fopenmp"]
SANITIZE_ARGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


def _flags(sanitize: bool) -> tuple[list[str], list[str]]:
    if sanitize:
        return COMPILE_ARGS + SANITIZE_ARGS, LINK_ARGS + SANITIZE_ARGS
    return list(COMPILE_ARGS), list(LINK_ARGS)


def source_hash(sanitize: bool = False) -> str:
    """Hash of the C sources and flags; compiled into the module (fc_source_hash) so a
    stale build is recognised."""
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    h.update(repr(_flags(sanitize)).encode())
    return h.hexdigest()[:24]


def make_ffibuilder(sanitize: bool = False, absolute: bool = False):
    """The cffi FFI for impls.openmp._flatconv. Paths are relative to the current
    directory for setuptools (which wants relative sources), absolute for ffi.compile."""
    import cffi

    def path(p):
        return p if absolute else os.path.relpath(p)

    with open(os.path.join(HERE, "flatconv_api.h")) as f:
        api = f.read()
    cflags, lflags = _flags(sanitize)
    ffi = cffi.FFI()
    ffi.cdef(api)
    ffi.set_source(
        MODULE,
        '#include <stdint.h>\n#include "flatconv_api.h"\n',
        sources=[path(os.path.join(HERE, "flatconv.c"))],
        include_dirs=[path(HERE)],
        define_macros=[("FC_SOURCE_HASH", '"%s"' % source_hash(sanitize))],
        extra_compile_args=cflags,
        extra_link_args=lflags,
    )
    return ffi


def cache_dir() -> str:
    """Where run-time builds go: $FLATCONV_CACHE_DIR, else $XDG_CACHE_HOME/flatconv,
    else ~/.cache/flatconv."""
    root = os.environ.get("FLATCONV_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flatconv")
    return root


def _find_so(folder: str) -> str | None:
    sub = os.path.join(folder, *MODULE.split(".")[:-1])
    if os.path.isdir(sub):
        for name in sorted(os.listdir(sub)):
            if name.startswith("_flatconv") and name.endswith((".so", ".pyd")):
                return os.path.join(sub, name)
    return None


def build_in_cache(sanitize: bool = False, verbose: bool = False) -> str:
    """Build the extension into the cache (once per source hash); return the .so path."""
    root = cache_dir()
    target = os.path.join(root, ("openmp-asan-" if sanitize else "openmp-") + source_hash(sanitize))
    found = _find_so(target)
    if found:
        return found
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="build-", dir=root)
    try:
        make_ffibuilder(sanitize=sanitize, absolute=True).compile(tmpdir=tmp, verbose=verbose)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not _find_so(target):
                raise
        found = _find_so(target)
        if not found:
            raise RuntimeError(f"cffi built no module under {target}")
        return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # python impls/openmp/_build.py [--sanitize]: build into the cache
    import sys

    print(build_in_cache(sanitize="--sanitize" in sys.argv, verbose=True))

"""Finds (or builds) the compiled kernels, once, on first use.

Order: the module built at install time (``impls.openmp._flatconv``) if it was built
from the current sources; otherwise a build in the user cache (see ``_build``). Every
failure becomes a one-line reason for ``unavailable_reason``; nothing here raises.

Environment:
  FLATCONV_OPENMP_SANITIZE=1   use a build with -fsanitize=address,undefined (sanitize.sh)
  FLATCONV_OPENMP_NO_BUILD=1   never compile at run time (report unavailable instead)
  FLATCONV_OPENMP_ISA=NAME     force avx512, avx2 or baseline (must be supported)
  FLATCONV_CACHE_DIR=DIR       where run-time builds go
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading

ISAS = {"baseline": 0, "avx2": 1, "avx512": 2}


@dataclasses.dataclass
class Extension:
    ffi: object = None
    lib: object = None
    origin: str = ""
    reason: str | None = None


_lock = threading.Lock()
_loaded: Extension | None = None


def load() -> Extension:
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load()
    return _loaded


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[-1] if text else ''}".strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _from_file(path: str):
    name = "impls.openmp._flatconv"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load() -> Extension:
    try:
        import cffi  # noqa: F401
    except ImportError:
        return Extension(reason="cffi is not installed (pip install cffi)")
    from . import _build

    sanitize = os.environ.get("FLATCONV_OPENMP_SANITIZE", "") not in ("", "0")
    try:
        want = _build.source_hash(sanitize)
    except OSError as exc:
        return Extension(reason=f"the C sources of impls/openmp are missing ({_first_line(exc)})")
    module, origin, why = None, "", "not built at install time"
    if not sanitize:
        try:
            from . import _flatconv as installed
        except ImportError:
            why = "not built at install time"
        else:
            got = installed.ffi.string(installed.lib.fc_source_hash()).decode()
            if got == want:
                module, origin = installed, f"installed: {installed.__file__}"
            else:
                why = "the installed build is stale (built from other sources)"
    if module is None:
        if os.environ.get("FLATCONV_OPENMP_NO_BUILD", "") not in ("", "0"):
            return Extension(reason=f"the C extension is {why}, and FLATCONV_OPENMP_NO_BUILD forbids building it")
        try:
            path = _build.build_in_cache(sanitize=sanitize)
            module = _from_file(path)
            origin = f"built on first use: {path}"
        except Exception as exc:  # a missing compiler, a failed compile, an unwritable cache
            return Extension(reason=f"the C extension is {why} and building it failed ({_first_line(exc)}); "
                                    "`python impls/openmp/_build.py` shows the compiler output")
    forced = os.environ.get("FLATCONV_OPENMP_ISA")
    if forced:
        if forced not in ISAS or module.lib.fc_set_isa(ISAS[forced]) != 0:
            return Extension(reason=f"FLATCONV_OPENMP_ISA={forced!r} is not one of {sorted(ISAS)} supported by this CPU")
    return Extension(module.ffi, module.lib, origin, None)

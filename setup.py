"""setuptools entry: everything is in pyproject.toml except the optional C extension.

`cffi_modules` builds impls.openmp._flatconv (cffi out-of-line API mode) at install time,
editable or not. The build is optional: if it fails (no C compiler, no OpenMP), the
install still succeeds, and impls.openmp tries again into a user cache on first use or
reports the reason through unavailable_reason("cpu").
"""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when an extension cannot be built."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the package usable
            self.warn(f"optional C extensions not built: {exc}")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self.warn(f"optional C extension {ext.name} not built ({exc}); impls.openmp will build it on "
                      "first use or report why it is unavailable")


setup(
    cffi_modules=["impls/openmp/_build.py:make_ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)

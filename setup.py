"""Build the compiled rating core; fall back to the pure twin when no compiler is available.

The metadata lives in pyproject.toml. This file only adds the Cython extension, following
aiohttp's pattern: a failed build is reported and the package still installs, and
``rating_core.COMPILED`` then says False.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but let the install go on (pure twin) if the toolchain is missing."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "use the twin"
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(
            f"WARNING: the compiled rating core could not be built ({exc}); "
            "creditgate will use the pure-Python twin.",
            file=sys.stderr,
        )


def extensions():
    if os.environ.get("CREDITGATE_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not installed; using the pure-Python rating core.", file=sys.stderr)
        return []
    return cythonize(
        ["rating_core/_rating.pyx"],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

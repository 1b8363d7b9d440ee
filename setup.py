"""The compiled hot path (shmwal/_native/hot.c) is optional: where it cannot be
built, shmwal runs the same protocol in pure Python (shmwal/client/hot.py)."""

import importlib.util
import os
import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUT_H = os.path.join("shmwal", "_native", "layout.h")


def write_layout_header() -> None:
    """shmwal/_native/layout.h from shmwal/blocks/layout.py, the one copy of every constant.

    Generated at every build (and git-ignored), so it cannot go stale against layout.py;
    a module built before a layout change is refused at import (client/hot.py compares).
    layout.py is loaded on its own: the package's dependencies need not be installed yet.
    """
    spec = importlib.util.spec_from_file_location("_shmwal_layout", os.path.join(HERE, "shmwal", "blocks", "layout.py"))
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    text = layout.c_header()
    path = os.path.join(HERE, LAYOUT_H)
    try:
        with open(path) as f:
            if f.read() == text:
                return   # unchanged: keep its mtime, so nothing rebuilds for it
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)


class BuildExt(build_ext):
    def run(self):
        write_layout_header()
        super().run()


# xxHash's runtime dispatcher (AVX-512 / AVX2 / SSE2 by cpuid) exists for x86 only;
# elsewhere hot.c hashes with the inline code.
X86 = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}
sources = ["shmwal/_native/hot.c"] + (["shmwal/_native/xxh_x86dispatch.c"] if X86 else [])

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "shmwal._hot",
            sources=sources,
            depends=["shmwal/_native/xxhash.h", "shmwal/_native/xxh_x86dispatch.h", "shmwal/_native/fused_xxh3.h",
                     "shmwal/_native/dispatch.h", LAYOUT_H,
                     "shmwal/blocks/layout.py"],
            define_macros=[("SHMWAL_XXH_DISPATCH", "1")] if X86 else [],
            # Hidden: xxHash's symbols stay private to this module (PyInit_ is exported anyway).
            extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra",
                                "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type"],
            libraries=["pthread"],
            optional=True,
        )
    ],
)

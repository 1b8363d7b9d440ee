"""The compiled hot path (shmwal/_native/hot.c) is optional: where it cannot be
built, shmwal runs the same protocol in pure Python (shmwal/client/hot.py)."""

import platform

from setuptools import Extension, setup

# xxHash's runtime dispatcher (AVX-512 / AVX2 / SSE2 by cpuid) exists for x86 only;
# elsewhere hot.c hashes with the inline code.
X86 = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}
sources = ["shmwal/_native/hot.c"] + (["shmwal/_native/xxh_x86dispatch.c"] if X86 else [])

setup(
    ext_modules=[
        Extension(
            "shmwal._hot",
            sources=sources,
            depends=["shmwal/_native/xxhash.h", "shmwal/_native/xxh_x86dispatch.h"],
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

"""The compiled hot path (shmwal/_native/hot.c) is optional: where it cannot be
built, shmwal runs the same protocol in pure Python (shmwal/hot.py)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmwal._hot",
            sources=["shmwal/_native/hot.c"],
            depends=["shmwal/_native/xxhash.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            libraries=["pthread"],
            optional=True,
        )
    ],
)

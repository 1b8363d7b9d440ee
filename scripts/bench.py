#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/bench.py [options]`` == ``shmwal bench [options]``."""

import os
import sys

# Run from a checkout without installing: the repository root holds the shmwal package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shmwal.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

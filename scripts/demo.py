"""Run the shmwal demo (same as `shmwal demo`)."""
import sys

from shmwal.demo import main

sys.exit(main())

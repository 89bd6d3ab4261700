"""Kernel specs installed by container-kernel 0.1 run `python -m container_kernel.launcher`:
the installed spec's argv face, now faces/spec_argv.py (`container-kernel sync` rewrites them)."""

import sys

from .faces.spec_argv import main

if __name__ == "__main__":
    sys.exit(main())

"""A container runtime from outside container-kernel, as a site would add one: Charliecloud's
ch-run under another executable name, registered by entry point (the dist-info beside this file;
tests/test_outside_runtime.py puts this folder on PYTHONPATH)."""

from __future__ import annotations

from container_kernel.runtimes.charliecloud import Charliecloud


class Wrapped(Charliecloud):
    """ch-run, called through a site's wrapper script `wrapped-ch-run`."""

    name = "wrapped-ch"
    executables = ("wrapped-ch-run",)

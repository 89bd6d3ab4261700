"""A Python kernel's command as the image runs it: `python [options] -m MODULE ARGS`, or the
injected form that first appends the host's ipykernel to sys.path (kernel_check.py). Read by the
check (does the image have ipykernel?) and by standbys (which module to run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# An injected ipykernel's command : `python -c INJECTED SITE MODULE ARGS...`.
INJECTED = r"""
import runpy, sys
sys.path.append(sys.argv[1])
module = sys.argv[2]
sys.argv = [sys.argv[0]] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class KernelCommand:
    """A kernel command read as `python [options] -m MODULE ARGS` (or its injected form)."""

    interpreter: list[str]  # the python and its options
    extra_path: str  # appended to sys.path first ("" for none)
    module: str
    arguments: list[str]

    @classmethod
    def parse(cls, command: Sequence[str]) -> KernelCommand | None:
        """None for a command of another shape (another language's kernel)."""
        command = list(command)
        for i, arg in enumerate(command[1:], 1):
            if arg == "-m" and len(command) > i + 1:
                return cls(command[:i], "", command[i + 1], command[i + 2 :])
            if arg == "-c" and command[i + 1 : i + 2] == [INJECTED] and len(command) > i + 3:
                return cls(command[:i], command[i + 2], command[i + 3], command[i + 4 :])
            if not arg.startswith("-") or arg == "-c":
                return None
        return None

"""Container runtimes: one contract (base.Runtime), one module per backend, found by name
(registry.find_runtime) among container-kernel's own and those other packages register."""

from __future__ import annotations

from .base import Bind, Command, ExecRequest, Fact, Progress, Runtime, Store, parse_bind
from .names import names
from .registry import find_runtime, runtime_class

__all__ = [
    "Bind", "Command", "ExecRequest", "Fact", "Progress", "Runtime", "Store", "find_runtime",
    "names", "parse_bind", "runtime_class",
]  # fmt: skip

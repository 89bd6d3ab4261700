"""The one error type users see: a single line that says what is wrong and what to do."""

from __future__ import annotations

import re
from collections.abc import Iterable

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ContainerKernelError(RuntimeError):
    """A launch cannot go ahead (missing runtime, missing image, bad bind, kernel died at start)."""


def runtime_message(stderr_lines: Iterable[str]) -> str:
    """A runtime's stderr as one line for Jupyter: colours stripped, lines joined."""
    lines = (_ANSI.sub("", line).strip() for line in stderr_lines)
    return " | ".join(line for line in lines if line) or "no message on stderr"

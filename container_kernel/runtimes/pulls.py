"""What every runtime's pull shares: the names of pulled images, running the pull with its
progress shown line by line, and one line that says why a pull failed.

The image cache (images/cache.py) calls a runtime's `pull` with a `Store`; this module is what
that pull needs of its own, so that runtimes never import the cache.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..ground.errors import ContainerKernelError, runtime_message

if TYPE_CHECKING:
    from .base import Progress


def cache_key(reference: str) -> str:
    """A short, stable name for a reference (the record's and the image's file names)."""
    return hashlib.sha256(reference.encode()).hexdigest()[:16]


def readable_name(reference: str) -> str:
    """`docker://host/group/python:3.12-slim` -> `python_3.12-slim` (for people listing files)."""
    last = reference.split("://", 1)[-1].rsplit("/", 1)[-1].split("@", 1)[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", last.replace(":", "_")) or "image"


def run_pull(argv: list[str], env: dict[str, str], reference: str, root: Path,
             progress: Progress) -> None:  # fmt: skip
    """Run a runtime's pull, its output going to `progress` line by line; a failure raises
    one line that leads with the cause (registry unreachable, unknown image, no space)."""
    try:
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    except OSError as err:
        msg = f"Cannot pull {reference}: {argv[0]}: {err.strerror}."
        raise ContainerKernelError(msg) from None
    lines: list[str] = []
    with process:
        for raw in _lines(process.stdout):
            line = _ANSI.sub("", raw).strip()
            if line and (not lines or line != lines[-1]):
                lines.append(line)
                progress(line)
    if process.returncode != 0:
        raise ContainerKernelError(pull_failure(reference, lines[-8:], root))


def _lines(stream) -> Iterator[str]:
    """Lines of a pull's output, progress bars (`\\r`) included, as they come."""
    pending = b""
    while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]", pending)
        for line in complete:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNREACHABLE = (
    "connection refused", "no such host", "network is unreachable", "name or service not known",
    "failed to establish a new connection", "temporary failure in name resolution",
    "i/o timeout", "no route to host",
)  # fmt: skip
_UNKNOWN = ("manifest unknown", "name unknown", "not found", "404", "does not exist",
            "unauthorized", "denied")  # fmt: skip


def pull_failure(reference: str, lines: list[str], root: Path) -> str:
    """The one-line message for a failed pull, from the runtime's last lines."""
    text = " ".join(lines).lower()
    said = runtime_message(lines) if lines else "no message"
    host = reference.split("://", 1)[-1].split("/", 1)[0]
    if "no space left" in text or "disk quota exceeded" in text:
        return (f"No space left in the image cache {root} while pulling {reference}: free "
                "space (`container-kernel cache clean`) or set image_cache to a larger "
                "folder.")  # fmt: skip
    if any(word in text for word in _UNREACHABLE):
        return (f"Cannot reach the registry {host} to pull {reference} ({said}): check the "
                "address and the network; a pulled image starts without it.")  # fmt: skip
    if any(word in text for word in _UNKNOWN):
        return f"No such image (or no access) in the registry: {reference} ({said})."
    return f"Pulling {reference} failed: {said}"

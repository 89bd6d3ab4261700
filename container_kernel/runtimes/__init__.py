"""Container runtimes: find the one to use, learn its flavour once, build its `exec` command."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..ground.errors import ContainerKernelError
from ..images.cache import ImageCache, Progress
from . import apptainer, charliecloud
from .base import Bind, Command, ExecRequest, parse_bind, with_user

__all__ = ["Bind", "Command", "ExecRequest", "Runtime", "find_runtime", "parse_bind"]

# Setting value -> (backend, executables to look for, in order).
BACKENDS: dict[str, tuple[ModuleType, tuple[str, ...]]] = {
    "apptainer": (apptainer, ("apptainer",)),
    "singularity": (apptainer, ("singularity",)),
    "charliecloud": (charliecloud, charliecloud.EXECUTABLES),
}
AUTO_ORDER = ("apptainer", "singularity", "charliecloud")


@dataclass(frozen=True)
class Runtime:
    """An installed runtime: its executable, its flavour (what `--version` said), its backend."""

    executable: str
    flavour: Any
    backend: ModuleType

    def exec_command(self, request: ExecRequest, host_env: Mapping[str, str]) -> Command:
        """The argv, the runtime process's environment and the files that run `request`."""
        return self.backend.exec_command(self.executable, self.flavour, request, host_env)

    @property
    def cache_kind(self) -> str:
        """What its pulled images are ("sif", "ch-image"): a cache keeps them apart."""
        return self.backend.CACHE_KIND

    def pull(
        self, reference: str, cache: ImageCache, pull_args: Sequence[str], progress: Progress
    ) -> Path:
        """Pull a registry image into `cache` (see images.py); the local image's path."""
        return self.backend.pull(
            self.executable, self.flavour, reference, cache, pull_args=pull_args, progress=progress
        )

    @property
    def mounts_in_private_tmp(self) -> bool:
        """Whether it can mount the notebook's folder under the private /tmp we bind."""
        return self.flavour.mounts_in_private_tmp

    @property
    def forwards_signals(self) -> bool:
        """Whether the process Popen starts is a parent that forwards signals to the command
        (Apptainer's starter), rather than the command itself (ch-run execs it)."""
        return self.flavour.forwards_signals

    def __str__(self) -> str:
        return f"{self.flavour} ({self.executable})"


def find_runtime(runtime: str = "auto", runtime_path: str = "") -> Runtime:
    """The runtime a setting names; a clear error when it is not installed."""
    names = AUTO_ORDER if runtime == "auto" else (runtime,)
    if runtime_path:
        executable = shutil.which(os.path.expanduser(runtime_path))
        if not executable:
            msg = f"runtime_path {runtime_path!r} is not an executable file."
            raise ContainerKernelError(msg)
        name = names[0] if runtime != "auto" else _name_of(executable)
        return _detect(BACKENDS[name][0], executable)
    for name in names:
        backend, executables = BACKENDS[name]
        for candidate in executables:
            if executable := shutil.which(candidate):
                return _detect(backend, executable)
    wanted = " or ".join(exe for name in names for exe in BACKENDS[name][1])
    msg = (
        f"No container runtime found: {wanted} is not on PATH. Install Apptainer or "
        "Charliecloud, load its module (e.g. `module load apptainer`), or set runtime_path."
    )
    raise ContainerKernelError(msg)


def _name_of(executable: str) -> str:
    base = os.path.basename(executable)
    for name, (_, executables) in BACKENDS.items():
        if base in executables:
            return name
    return "apptainer"  # a renamed or wrapped Apptainer/Singularity, most likely


def _detect(backend: ModuleType, executable: str) -> Runtime:
    realpath = os.path.realpath(executable)
    return Runtime(executable, _flavour(backend, realpath, os.stat(realpath).st_mtime_ns), backend)


@functools.lru_cache(maxsize=16)
def _flavour(backend: ModuleType, executable: str, _mtime_ns: int) -> Any:
    """Run `--version` once per binary (and again only if the binary changes)."""
    try:
        out = subprocess.run(
            [executable, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=with_user(os.environ),
        )
    except OSError as err:
        msg = f"Cannot run {executable} --version: {err.strerror}."
        raise ContainerKernelError(msg) from None
    except subprocess.TimeoutExpired:
        msg = f"{executable} --version did not answer in 30 s: is its file system hung?"
        raise ContainerKernelError(msg) from None
    return backend.parse_version(out.stdout or out.stderr)

"""Finding the installed runtime a setting names, and loading a registered runtime's class.

Which names there are is names.py's: container-kernel's own, known without installed metadata,
and those other packages register in the entry point group `container_kernel.runtimes`. Another
package's runtime is loaded when a setting names it (or `auto` gets to it), never before.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator

from ..ground.errors import ContainerKernelError
from .base import Runtime
from .names import BUILT_IN, names, others


def find_runtime(runtime: str = "auto", runtime_path: str = "") -> Runtime:
    """The runtime a setting names, installed; a one-line error when it is not.

    `auto` takes the first found on PATH of apptainer, singularity and charliecloud (ch-run),
    then of the runtimes other packages registered, by name. `runtime_path` names the
    executable: of the runtime named, or under `auto`, of the runtime whose executable has its
    file name (else Apptainer: a renamed or wrapped Apptainer or Singularity, most likely).
    """
    named = None if runtime == "auto" else runtime_class(runtime)
    if runtime_path:
        executable = shutil.which(os.path.expanduser(runtime_path))
        if not executable:
            msg = f"runtime_path {runtime_path!r} is not an executable file."
            raise ContainerKernelError(msg)
        return (named or _class_of(executable)).detect(executable)
    tried: list[type[Runtime]] = []
    for cls in [named] if named else _auto_order():
        tried.append(cls)
        for candidate in cls.executables:
            if executable := shutil.which(candidate):
                return cls.detect(executable)
    wanted = " or ".join(exe for cls in tried for exe in cls.executables)
    msg = (
        f"No container runtime found: {wanted} is not on PATH. Install Apptainer or "
        "Charliecloud, load its module (e.g. `module load apptainer`), or set runtime_path."
    )
    raise ContainerKernelError(msg)


def runtime_class(name: str) -> type[Runtime]:
    """The class registered as `name` (loaded now); a one-line error naming the installed ones."""
    if name in BUILT_IN:
        module, _, attribute = BUILT_IN[name].partition(":")
        return getattr(importlib.import_module(module), attribute)
    entry = others().get(name)
    if entry is None:
        msg = f"Unknown runtime {name!r}: installed runtimes are {', '.join(names())} (or auto)."
        raise ContainerKernelError(msg)
    try:
        cls = entry.load()
    except Exception as err:  # another package's code: whatever it raises, say which
        msg = f"Cannot load the runtime {name!r} ({entry.value}): {type(err).__name__}: {err}"
        raise ContainerKernelError(msg) from err
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        msg = f"The runtime {name!r} ({entry.value}) is not a container_kernel Runtime subclass."
        raise ContainerKernelError(msg)
    if cls.name != name:  # (a subclass that kept its parent's name)
        msg = f"The runtime {name!r} ({entry.value}) calls itself {cls.name!r}: set its `name`."
        raise ContainerKernelError(msg)
    return cls


def runtime_classes() -> list[type[Runtime]]:
    """Every registered runtime's class, in the order of `names()` (all loaded)."""
    return [runtime_class(name) for name in names()]


def _auto_order() -> Iterator[type[Runtime]]:
    """The built-in runtimes, then the others registered (looked for only when needed)."""
    for name in BUILT_IN:
        yield runtime_class(name)
    for name in sorted(others()):
        yield runtime_class(name)


def _class_of(executable: str) -> type[Runtime]:
    base = os.path.basename(executable)
    for cls in _auto_order():
        if base in cls.executables:
            return cls
    return runtime_class("apptainer")  # a renamed or wrapped Apptainer/Singularity, most likely

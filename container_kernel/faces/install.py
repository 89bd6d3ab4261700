"""What `container-kernel install IMAGE` installs: one kernel spec per kernel the image has.

The kernel specs the image ships (image_kernels.py) and its Python with ipykernel (probe.py):
a Python kernel is always built by us (frozen modules, debugger, encryption as its ipykernel
allows), named after the image's own Python spec if it ships one; any other language runs the
image's own argv. One kernel keeps the plain name (`<image>`); several are `<image>-<kernel>`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..ground.errors import ContainerKernelError
from ..images.probe import Facts, probe, require_ipykernel
from ..images.shipped_kernels import ImageKernel, find_kernels
from ..settings import ContainerSettings
from . import kernelspecs as kernelspec

PYTHON_KERNEL = "python3"  # the name of a Python kernel the image ships no spec for


@dataclass
class Planned:
    """One spec to install: the image's kernel it runs, the kernel.json, its logos."""

    kernel: str
    spec: dict[str, Any]
    logos: dict[str, bytes] | None = field(default=None)  # None: Python's
    summary: str = ""


def plan_kernels(
    settings: ContainerSettings,
    effective: ContainerSettings,
    *,
    interpreter: str | None,
    display_name: str = "",
    say: Callable[[str], None] = print,
) -> list[Planned]:
    """Every kernel the image offers (`effective`: with the site's settings, to run it; the
    spec keeps `settings` alone). `interpreter` named: that Python only, and it must work."""
    if interpreter:
        facts = _python_facts(effective, interpreter)
        return [_python(settings, PYTHON_KERNEL, interpreter, facts, display_name)]
    try:
        found = find_kernels(effective)
    except ContainerKernelError:
        found = []  # no /bin/sh: the Python probe below says what is wrong with the image
    others = [_other(settings, kernel, display_name) for kernel in found if not kernel.is_python]
    pythons = [(k.name, k.argv[0]) for k in found if k.is_python] or [(PYTHON_KERNEL, "python3")]
    planned, failures = [], []
    for name, python in pythons:
        try:
            facts = _python_facts(effective, python)
        except ContainerKernelError as err:
            failures.append(err)
            continue
        planned.append(_python(settings, name, python, facts, display_name))
    if not planned and not others:
        raise failures[0]
    for err in failures:
        say(f"  (no Python kernel: {err})")
    return planned + others


def _python_facts(effective: ContainerSettings, interpreter: str) -> Facts:
    """The probe's facts of a Python that can run a kernel: with ipykernel, or without when
    the host provides it (inject_kernel)."""
    facts = probe(effective, interpreter)
    if effective.inject_kernel == "never":
        return require_ipykernel(facts, interpreter, effective.image)
    return facts


def choose(planned: list[Planned], wanted: Sequence[str] | None) -> list[Planned]:
    """The kernels `--kernel` names (all when none is named)."""
    if not wanted:
        return planned
    known = {item.kernel: item for item in planned}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        msg = (
            f"No kernel {', '.join(map(repr, unknown))} in the image; it has: "
            f"{', '.join(known) or 'none'} (see --list-kernels)."
        )
        raise ContainerKernelError(msg)
    return [known[name] for name in dict.fromkeys(wanted)]


def spec_name(base: str, kernel: str, found: list[Planned]) -> str:
    """`base` for an image of one kernel; `base-<kernel>` for each kernel of an image of several
    (also when only some are installed: names do not change with --kernel)."""
    return base if len(found) == 1 else f"{base}-{kernel}"


def _python(
    settings: ContainerSettings, name: str, interpreter: str, facts: Facts, display_name: str
) -> Planned:
    spec = kernelspec.kernel_dict(settings, display_name, interpreter, facts)
    debugger = f"debugpy {facts.debugpy}" if facts.debugger else "no debugger"
    encryption = "encryptable channels" if facts.curve else "no encryption (ipykernel < 7)"
    kernel = f"ipykernel {facts.ipykernel}"
    if facts.ipykernel is None:
        kernel, debugger, encryption = "ipykernel provided from the host at start", "", ""
    details = ", ".join(part for part in (kernel, debugger, encryption) if part)
    summary = f"Python: {facts.executable} {facts.python}, {details}"
    return Planned(name, spec, None, summary)


def _other(settings: ContainerSettings, kernel: ImageKernel, display_name: str) -> Planned:
    spec = kernelspec.image_kernel_dict(settings, kernel, display_name)
    summary = f"{kernel.language or 'unknown language'}: {' '.join(kernel.argv)} ({kernel.path})"
    return Planned(kernel.name, spec, kernel.logos, summary)


def report(image: str, planned: list[Planned], say: Callable[[str], None] = print) -> None:
    """What was found, one line per kernel."""
    say(f"checking {image}: {len(planned)} kernel{'s' if len(planned) != 1 else ''}")
    for item in planned:
        say(f"  {item.kernel}: {item.summary}")

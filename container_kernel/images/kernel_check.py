"""Before the first start of a Python kernel in an image, once: does its Python run, with
ipykernel? The answer is kept by the image's identity (path, inode, size, mtime) in
`<image_cache>/checks/`, so later starts run no extra process. A failing check stops the start
at once, naming the image, what is missing and the fix.

An image whose Python lacks ipykernel (setting `inject_kernel`: `auto`; or every image with
`always`) gets one from the host (injection.py), bound read-only and appended to `sys.path`
(the image's own packages come first; `PYTHONPATH` would put it before them). Its bytecode is
compiled once, inside the image, for that Python: a read-only folder cannot cache it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..ground.errors import ContainerKernelError
from ..ground.folders import file_identity, private_folder, read_only_tree
from ..runtimes.base import Bind, Progress
from ..settings import ContainerSettings
from . import injection, probe
from .kernel_command import INJECTED, KernelCommand

INJECTED_MOUNT = "/opt/container-kernel/ipykernel"
KERNEL_MODULES = frozenset({"ipykernel_launcher", "ipykernel"})
COMPILED = ".compiled"  # in an injected folder, once its bytecode is there


def kernel_command(
    settings: ContainerSettings, image: str, command: Sequence[str], progress: Progress
) -> tuple[list[str], list[Bind]]:
    """The kernel command to run (the injected form when ipykernel comes from the host) and
    the binds it needs; a command that is not `python -m ipykernel...` as it is."""
    parsed = KernelCommand.parse(command)
    if parsed is None or parsed.module not in KERNEL_MODULES or parsed.extra_path:
        return list(command), []
    facts = image_facts(settings, image, parsed.interpreter)
    has_kernel = facts["probe"].get("ipykernel") is not None
    if settings.inject_kernel == "never" or (settings.inject_kernel == "auto" and has_kernel):
        if not has_kernel:
            why = facts["probe"].get("error") or "no ipykernel"
            msg = (
                f"{parsed.interpreter[0]} in {settings.image} has no ipykernel ({why}): set "
                "inject_kernel to 'auto' to provide it from the host, or install ipykernel in "
                "the image (pip install ipykernel)."
            )
            raise ContainerKernelError(msg)
        return list(command), []
    site = injected_site(settings, image, facts, parsed.interpreter, progress)
    bind = Bind(str(site), INJECTED_MOUNT, read_only=True, staging="ipykernel")
    inject = [*parsed.interpreter, "-c", INJECTED, INJECTED_MOUNT, parsed.module]
    return [*inject, *parsed.arguments], [bind]


def image_facts(settings: ContainerSettings, image: str, interpreter: list[str]) -> dict:
    """The probe's answers and the interpreter's target (injection.Target), once per image."""
    key = json.dumps([os.path.realpath(image), file_identity(image), interpreter])
    record = Path(settings.image_cache, "checks", hashlib.sha256(key.encode()).hexdigest()[:24])
    try:
        facts = json.loads(record.read_text())
        if _well_formed(facts):
            return facts
    except (OSError, ValueError):
        pass  # (none yet, or a damaged one: check again and write it anew)
    fix = (
        " (a Python kernel needs a Python in the image: name it in the kernel spec's argv, or "
        "use an image with one)"
    )
    answers = probe.ask(
        settings, interpreter, [probe.SCRIPT, injection.PROBE_SNIPPET], image=image, fix=fix
    )
    facts = {"probe": answers[0], "target": answers[1]}
    private_folder(record.parent)
    partial = record.with_name(f".{record.name}.{os.getpid()}")
    partial.write_text(json.dumps(facts))
    partial.replace(record)
    return facts


def _well_formed(facts) -> bool:
    """A record as image_facts writes it: two objects (anything else is checked again)."""
    return (
        isinstance(facts, dict)
        and isinstance(facts.get("probe"), dict)
        and isinstance(facts.get("target"), dict)
    )


def injected_site(
    settings: ContainerSettings, image: str, facts: dict, interpreter: list[str],
    progress: Progress,
) -> Path:  # fmt: skip
    """The host's ipykernel for this image's Python, its bytecode compiled inside once."""
    target = injection.Target.from_probe(facts["target"])
    site = injection.kernel_site(
        target, Path(settings.image_cache), wheels=settings.inject_wheels or None, log=progress
    )
    if not (site / COMPILED).exists():
        progress(f"compiling the provided ipykernel for Python {target.python} (once)")
        writable = Bind(str(site), INJECTED_MOUNT, staging="ipykernel")
        compile_all = [*interpreter, "-m", "compileall", "-q", "-j", "0", INJECTED_MOUNT]
        out = probe.run_in_image(settings, compile_all, image=image, extra_binds=[writable])
        if out.returncode == 0:  # (else it runs, slower: Python compiles at each start)
            (site / COMPILED).touch()
    if (site / COMPILED).exists() and site.stat().st_mode & 0o222:
        read_only_tree(site)  # (ch-run binds it read-write: a user's kernel cannot change it)
    return site

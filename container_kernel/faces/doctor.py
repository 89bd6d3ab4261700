"""`container-kernel check`: does this kernel spec (or image) start a kernel, and if not, why?

One line per fact, each starting `ok` or `FAIL`, a FAIL saying what to do. The last check is a
real kernel start through jupyter_client, as JupyterLab does it: a spec whose image runs Python
fine can still fail to start a kernel (a wrong argv, a bind the runtime refuses).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import TraitError

from ..ground.errors import ContainerKernelError
from ..ground.folders import private_folder
from ..images import cache as images
from ..images.probe import Facts, probe
from ..images.resolve import local_image
from ..launch import gpus
from ..runtimes.base import Runtime
from ..runtimes.registry import find_runtime
from ..settings import ContainerSettings
from . import kernelspecs as kernelspec
from .kernelspecs import command_inside, image_kind

START_TIMEOUT = 60  # seconds for a kernel's first kernel_info reply


class Report:
    """Prints the lines; remembers whether any failed."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say
        self.failed = False

    def ok(self, what: str, detail: str) -> None:
        self.say(f"ok   {what}: {detail}")

    def fail(self, what: str, problem: str) -> None:
        self.say(f"FAIL {what}: {problem}")
        self.failed = True


def check_spec(name: str, entry: dict[str, Any], report: Report) -> None:
    """An installed spec, with the site's settings, started as a Jupyter server would."""
    spec = entry["spec"]
    report.ok("spec", f"{name} in {entry['resource_dir']} ({spec.get('display_name', '')})")
    try:
        settings = kernelspec.spec_settings(spec)
    except (ContainerKernelError, TraitError) as err:
        report.fail("settings", f"{err} - fix metadata.kernel_provisioner.config in kernel.json")
        return
    interpreter = command_inside(spec["argv"])[0]
    if str(spec.get("language", "python")).lower() == "python":
        ready = _environment(settings, interpreter, report)
    else:  # its kernel's start says the rest (kernel_info answers for every language)
        runtime = _runtime(settings, report)
        ready = _image(settings, runtime, report) and runtime is not None
    if ready:
        _start(report, lambda: KernelManager(kernel_name=name))


def check_image(image: str, flags: dict[str, Any], interpreter: str, report: Report) -> None:
    """An image not installed as a spec: the same checks, the kernel from a temporary spec."""
    if "home" not in ContainerSettings().locked:
        flags = {"home": "temporary", **flags}  # a trial start leaves no fake home behind
    try:
        settings = ContainerSettings(image=image, **flags)
    except (ContainerKernelError, TraitError) as err:
        report.fail("settings", str(err))
        return
    facts = _environment(settings, interpreter, report)
    if not facts:
        return
    own = ContainerSettings(image=image, site=False, **flags)  # (the site's apply when it runs)
    spec = kernelspec.kernel_dict(own, "", interpreter, facts)
    name = kernelspec.default_kernel_name(image)
    with tempfile.TemporaryDirectory(prefix="container-kernel-check-") as tmp:
        kernelspec.write_kernel_spec(Path(tmp, name), spec)
        specs = KernelSpecManager(kernel_dirs=[tmp])
        _start(report, lambda: KernelManager(kernel_name=name, kernel_spec_manager=specs))


def _environment(settings: ContainerSettings, interpreter: str, report: Report) -> Facts | None:
    """Runtime, what it can do, the image, the interpreter inside: the facts if all is well."""
    runtime = _runtime(settings, report)
    image_ok = _image(settings, runtime, report)
    if runtime is None or not image_ok:
        return None
    try:
        facts = probe(settings, interpreter)
    except (ContainerKernelError, OSError) as err:
        report.fail("python", f"{err} - install Python 3 in the image, or name its interpreter")
        return None
    report.ok("python", f"{facts.executable} {facts.python} ({facts.implementation})")
    if facts.ipykernel is None and settings.inject_kernel == "never":
        report.fail(
            "ipykernel", f"{facts.error} - install ipykernel in the image (pip install ipykernel), "
            "or set inject_kernel to 'auto' to provide it from the host"
        )  # fmt: skip
        return None
    if facts.ipykernel is None or settings.inject_kernel == "always":
        report.ok("ipykernel", "provided from the host at start (inject_kernel), once built")
        return facts
    report.ok("ipykernel", facts.ipykernel)
    if facts.debugger:
        report.ok("debugger", f"yes, debugpy {facts.debugpy} (JupyterLab's debugger works)")
    else:
        report.ok("debugger", "none (ipykernel >= 6 with debugpy inside gives one)")
    return facts


def _runtime(settings: ContainerSettings, report: Report) -> Runtime | None:
    try:
        runtime = find_runtime(settings.runtime, settings.runtime_path)
    except ContainerKernelError as err:
        report.fail("runtime", str(err))
        return None
    report.ok("runtime", f"{runtime.flavour} ({runtime.executable})")
    # what this runtime says of itself: how values go in, whether it gives the GPUs asked for
    for fact in runtime.doctor(settings.image, gpus.vendor(settings.gpu), settings.gpu):
        (report.ok if fact.ok else report.fail)(fact.what, fact.detail)
    return runtime


def _image(settings: ContainerSettings, runtime: Runtime | None, report: Report) -> bool:
    image = settings.image
    if not image:
        report.fail("image", "none set - set `image` (or $CONTAINER_KERNEL_IMAGE)")
        return False
    if images.is_reference(image):
        return _registry_image(settings, runtime, report)
    if "://" in image:
        report.ok("image", f"{image} (the runtime fetches it)")
        return True
    path = Path(image).expanduser()
    if not path.exists():
        report.fail("image", f"{path} does not exist - build it there, or fix `image`")
        return False
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        report.fail("image", f"{path} is not readable by you - chmod a+rX it, or ask its owner")
        return False
    report.ok("image", f"{path} ({image_kind(path) or 'of an unknown kind'}, readable)")
    return True


def _registry_image(settings: ContainerSettings, runtime: Runtime | None, report: Report) -> bool:
    """Pulled now if it is not cached yet, its progress shown."""
    if runtime is None:
        report.fail("image", f"{settings.image} cannot be pulled without a runtime")
        return False
    try:
        path = local_image(settings, lambda line: print(f"  {line}", flush=True), runtime)
    except ContainerKernelError as err:
        report.fail("image", str(err))
        return False
    report.ok("image", f"{settings.image}, pulled once: {path}")
    return True


def _start(report: Report, manager: Callable[[], KernelManager]) -> None:
    """Start a kernel, wait for its kernel_info reply, shut it down; report the time it took."""
    runtime_dir = Path(jupyter_runtime_dir())
    private_folder(runtime_dir)
    km = manager()
    km.connection_file = str(runtime_dir / f"kernel-check-{uuid.uuid4()}.json")
    with tempfile.TemporaryDirectory(prefix="container-kernel-check-") as cwd:
        kc = None
        begin = time.monotonic()
        try:
            km.start_kernel(cwd=cwd)
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=START_TIMEOUT)
            reply = kc.kernel_info(reply=True, timeout=10)["content"]
            took = time.monotonic() - begin
            report.ok(
                "kernel",
                f"started, kernel_info reply in {took:.1f} s ({reply.get('implementation', '?')} "
                f"{reply.get('implementation_version', '')}, protocol "
                f"{reply.get('protocol_version', '?')})",
            )
        except Exception as err:  # whatever stops a kernel, the doctor reports it and goes on
            report.fail("kernel", f"{_one_line(err)} - fix the spec's argv or settings")
        finally:
            if kc is not None:
                kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=False)


def _one_line(err: Exception) -> str:
    text = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__

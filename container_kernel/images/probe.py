"""What an image's interpreter offers a kernel, learned by running it once (`install`, `check`).

The answers decide details of the kernel spec: `-Xfrozen_modules=off` on CPython >= 3.11 (as
ipykernel's own kernelspec does, so debugpy does not print its frozen-modules warning at every
start), `metadata.debugger` (ipykernel >= 6 with debugpy importable inside) and
`metadata.supported_encryption` (an ipykernel that applies CurveZMQ keys, 7.x, on a pyzmq built
with CURVE).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..ground.errors import ContainerKernelError, runtime_message
from ..launch.plan import plan
from ..launch.sessions import Session
from ..runtimes.base import Bind
from ..settings import ContainerSettings
from .resolve import local_image

SCRIPT = """
import json, platform, sys
facts = {"executable": sys.executable, "python": platform.python_version(),
         "implementation": platform.python_implementation(), "ipykernel": None, "debugpy": None}
try:
    import ipykernel
    facts["ipykernel"] = ipykernel.__version__
except Exception as err:
    facts["error"] = f"{type(err).__name__}: {err}"
try:
    import zmq
    from ipykernel.kernelapp import IPKernelApp
    facts["curve"] = zmq.has("curve") and "curve_secretkey" in IPKernelApp.class_trait_names()
except Exception:
    pass
try:
    import debugpy
    facts["debugpy"] = debugpy.__version__
except Exception:
    pass
print(json.dumps(facts))
"""


@dataclass(frozen=True)
class Facts:
    """The probe's answers (None: not importable)."""

    python: str
    implementation: str = "CPython"
    ipykernel: str | None = None
    debugpy: str | None = None
    curve: bool = False
    executable: str = ""
    error: str = ""

    @property
    def debugger(self) -> bool:
        """JupyterLab's debugger needs ipykernel >= 6 and debugpy in the kernel's Python."""
        return _version(self.ipykernel) >= (6,) and self.debugpy is not None

    @property
    def encryption(self) -> list[str]:
        """What `metadata.supported_encryption` declares: jupyter_client then provisions
        CurveZMQ keys (see settings `encryption`), which only such a kernel applies."""
        return ["curve"] if self.curve else []

    @property
    def python_arguments(self) -> list[str]:
        """What ipykernel's kernelspec puts before `-m`: frozen modules off on CPython 3.11+."""
        if self.implementation == "CPython" and _version(self.python) >= (3, 11):
            return ["-Xfrozen_modules=off"]
        return []

    def recorded(self) -> dict[str, str | None]:
        """What a kernel spec keeps of them (metadata.container_kernel.images.probe)."""
        keep = ("python", "implementation", "ipykernel", "debugpy", "curve")
        return {key: value for key, value in asdict(self).items() if key in keep}

    @classmethod
    def from_dict(cls, values: dict) -> Facts:
        """From the probe's JSON or a spec's record (unknown keys ignored)."""
        return cls(
            python=str(values.get("python") or ""),
            implementation=str(values.get("implementation") or ""),
            ipykernel=values.get("ipykernel"),
            debugpy=values.get("debugpy"),
            curve=values.get("curve") is True,
            executable=str(values.get("executable") or ""),
            error=str(values.get("error") or ""),
        )


def _version(text: str | None) -> tuple[int, ...]:
    numbers = []
    for part in (text or "").split("."):
        digits = "".join(c for c in part if c.isdigit())  # "6.17.0rc1", "3.12.0+"
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def run_in_image(
    settings: ContainerSettings,
    command: list[str],
    *,
    image: str | None = None,
    extra_binds: Sequence[Bind] = (),
) -> subprocess.CompletedProcess:
    """Run `command` once in the image (`image`: its local copy, when the caller has it) with
    the kernel's settings (no home, in `/`), its output captured; nothing of it stays (its
    session ends)."""
    image = image or local_image(settings)
    session = Session.create()
    try:
        launch = plan(
            settings, command, cwd="/", home=None, host_env=os.environ, session=session,
            image=image, extra_binds=extra_binds,
        )  # fmt: skip
        return subprocess.run(
            launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True, check=False
        )
    finally:
        session.end()


def ask(
    settings: ContainerSettings,
    interpreter: Sequence[str],
    scripts: Sequence[str],
    *,
    image: str | None = None,
    fix: str = "",
) -> list[dict]:
    """Run `scripts` (each prints one JSON object as its last line) in one run of
    `interpreter` in the image, and return their answers, in order. An interpreter that does
    not run at all (or dies) raises with the runtime's own words, then `fix`."""
    out = run_in_image(settings, [*interpreter, "-c", "\n".join(scripts)], image=image)
    lines = out.stdout.strip().splitlines()
    try:
        answers = [json.loads(line) for line in lines[-len(scripts) :]]
    except ValueError:
        answers = []
    if (
        out.returncode != 0
        or len(answers) != len(scripts)
        or not all(isinstance(answer, dict) for answer in answers)
    ):
        said = runtime_message(out.stderr.splitlines()[-6:])
        msg = f"{interpreter[0]} does not run in {settings.image}: {said}{fix}"
        raise ContainerKernelError(msg)
    return answers


def probe(settings: ContainerSettings, interpreter: str = "python3") -> Facts:
    """Run `interpreter` in the image with the kernel's settings and ask what it has.

    Raises with the runtime's own message when the interpreter does not run at all; a missing
    ipykernel is an answer (`ipykernel` None, `error` why), for the caller to judge.
    """
    (facts,) = ask(settings, [interpreter], [SCRIPT])
    return Facts.from_dict(facts)


def require_ipykernel(facts: Facts, interpreter: str, image: str) -> Facts:
    """The facts, when a kernel can start from them; else the reason and the fix."""
    if facts.ipykernel is None:
        msg = (
            f"{interpreter} with ipykernel does not run in {image}: {facts.error}; install "
            "ipykernel in the image (pip install ipykernel), or name another --python."
        )
        raise ContainerKernelError(msg)
    return facts

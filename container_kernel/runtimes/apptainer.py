"""Apptainer and Singularity (SingularityCE 3.x/4.x, Singularity 3.0-3.5, legacy 2.6).

The flavour quirks live here and nowhere else. Every flavour reads `--cleanenv`, `--home SRC:DST`
(which, unlike `-B SRC:$HOME`, really replaces the home on 2.6 too), `--no-home`, `--bind`,
`--pwd` and `--nv`. Values go in through the env prefix the flavour reads, which every version
has and which carries any byte (the `--env` flag splits on commas and is missing before 3.6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ContainerKernelError
from .base import ExecRequest

EXECUTABLES = ("apptainer", "singularity")
PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_")

_MODERN = re.compile(
    r"\b(apptainer|singularity-ce|singularity)\s+version\s+v?(\d+)\.(\d+)(?:\.(\d+))?"
)
_LEGACY = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Flavour:
    """One installed Apptainer/Singularity: what its `--version` says, and what that implies."""

    name: str  # "apptainer", "singularity-ce" or "singularity"
    version: tuple[int, int, int]

    @property
    def env_prefix(self) -> str:
        """Singularity of every age ignores APPTAINERENV_; Apptainer prefers it."""
        return "APPTAINERENV_" if self.name == "apptainer" else "SINGULARITYENV_"

    @property
    def has_no_eval(self) -> bool:
        """`--no-eval` stops shell evaluation of injected values (Apptainer 1.1, CE 3.10)."""
        if self.name == "apptainer":
            return self.version >= (1, 1, 0)
        return self.name == "singularity-ce" and self.version >= (3, 10, 0)

    def __str__(self) -> str:
        return f"{self.name} {'.'.join(map(str, self.version))}"


def parse_version(text: str) -> Flavour:
    """Read the flavour from `--version` output, leniently (distributions add suffixes)."""
    text = text.strip()
    if match := _MODERN.search(text):
        name, *numbers = match.groups()
        return Flavour(name, tuple(int(n or 0) for n in numbers))  # type: ignore[arg-type]
    if match := _LEGACY.match(text):
        return Flavour("singularity", tuple(int(n or 0) for n in match.groups()))  # type: ignore[arg-type]
    msg = f"Cannot tell which Apptainer/Singularity this is from its --version output: {text!r}."
    raise ContainerKernelError(msg)


def quote_for_eval(value: str) -> str:
    """Protect a value from the one round of double-quoted shell evaluation old runtimes apply."""
    return re.sub(r'([\\$`"])', r"\\\1", value)


def exec_command(
    executable: str, flavour: Flavour, request: ExecRequest, host_env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and the runtime's own environment for `exec` of `request`. Pure."""
    argv = [executable, "exec"]
    if request.cleanenv:
        argv.append("--cleanenv")
    if flavour.has_no_eval:
        argv.append("--no-eval")
    if request.home is None:
        argv.append("--no-home")
    else:
        argv += ["--home", f"{request.home.src}:{request.home.dst}"]
    for bind in request.binds:
        argv += ["--bind", bind.spec()]
    if request.workdir:
        argv += ["--pwd", request.workdir]
    if request.gpu:
        argv.append("--nv")
    argv += [*request.extra_args, request.image, *request.command]

    env = dict(host_env)
    if request.cleanenv:  # prefixed host variables would leak through a clean environment
        env = {k: v for k, v in env.items() if not k.startswith(PREFIXES)}
    for name, value in request.env.items():
        env[flavour.env_prefix + name] = value if flavour.has_no_eval else quote_for_eval(value)
    return argv, env

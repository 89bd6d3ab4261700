"""Apptainer and Singularity (SingularityCE 3.x/4.x, Singularity 3.0-3.5, legacy 2.6).

The flavour quirks live here and nowhere else. Every flavour reads `--cleanenv`, `--home SRC:DST`
(which, unlike `-B SRC:$HOME`, really replaces the home on 2.6 too), `--no-home`, `--bind`,
`--pwd` and `--nv`. Values go in through the env prefix the flavour reads, which every version
has and which carries any byte (the `--env` flag splits on commas and is missing before 3.6),
literally with `--no-eval` where it exists, escaped or refused where it does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ContainerKernelError
from .base import ExecRequest

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
    def forwards_signals(self) -> bool:
        """3.x and Apptainer keep a runtime parent that forwards signals; 2.x execs the command."""
        return self.name == "apptainer" or self.version >= (3, 0, 0)

    @property
    def evaluates_once(self) -> bool:
        """Values go through one round of double-quoted evaluation (Apptainer 1.0, 3.8-3.9)."""
        if self.name == "apptainer":
            return self.version < (1, 1, 0)
        return (3, 8, 0) <= self.version < (3, 10, 0)

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
    """Protect a value from one round of double-quoted shell evaluation (`evaluates_once`)."""
    return re.sub(r'([\\$`"])', r"\\\1", value)


# Older runtimes export values unquoted (3.0-3.5) or quote them their own way (3.6-3.7, 2.x):
# only these characters are known to arrive unchanged.
SAFE_VALUE = re.compile(r"[\w./:@%+,=-]*")


def value_inside(flavour: Flavour, name: str, value: str) -> str | None:
    """What to set so that `value` arrives byte for byte; None: Jupyter's informational
    `JPY_*` value cannot, and is left out. Never lets a user's value run as code."""
    if flavour.has_no_eval:
        return value
    if flavour.evaluates_once:
        return quote_for_eval(value)
    if SAFE_VALUE.fullmatch(value):
        return value
    if name.startswith("JPY_"):
        return None
    msg = (
        f"{flavour} would evaluate {name}={value!r} in a shell: use letters, digits and ./:@%+,=- "
        "only, or Apptainer >= 1.1 / SingularityCE >= 3.10 (they have --no-eval)."
    )
    raise ContainerKernelError(msg)


def _expressible(path: str) -> bool:
    """`--bind` splits on ',' and ':': a path holding one cannot be bound by name."""
    return "," not in path and ":" not in path


def exec_command(
    executable: str, flavour: Flavour, request: ExecRequest, host_env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and the runtime's own environment for `exec` of `request` (a pure function)."""
    argv = [executable, "exec"]
    if request.cleanenv:
        argv.append("--cleanenv")
    if flavour.has_no_eval:
        argv.append("--no-eval")
    if request.home is None:
        argv.append("--no-home")
    elif _expressible(request.home.src):
        argv += ["--home", f"{request.home.src}:{request.home.dst}"]
    else:
        msg = f"The fake home {request.home.src} has ',' or ':' in its path: set home_root."
        raise ContainerKernelError(msg)
    for bind in request.binds:
        if _expressible(bind.src) and _expressible(bind.dst):
            argv += ["--bind", bind.spec()]
        elif not (bind.staging == "notebook" and bind.src == bind.dst):
            msg = f"Apptainer cannot bind {bind.src}: ',' or ':' in the path; rename it."
            raise ContainerKernelError(msg)
        # else: the runtime starts in that folder and mounts its current directory itself
    if request.workdir:
        argv += ["--pwd", request.workdir]
    if request.gpu:
        argv.append("--nv")
    argv += [*request.extra_args, request.image, *request.command]

    env = dict(host_env)
    if request.cleanenv:  # prefixed host variables would leak through a clean environment
        env = {k: v for k, v in env.items() if not k.startswith(PREFIXES)}
    for name, value in request.env.items():
        if (inside := value_inside(flavour, name, value)) is not None:
            env[flavour.env_prefix + name] = inside
    return argv, env

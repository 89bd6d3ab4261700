"""The runtime contract: what every runtime backend receives (a runtime-neutral description of
one `exec`), what it gives back (a `Command`), and the `Runtime` base class it fills in.

The launch, the image cache, `container-kernel check` and the CLI use a runtime through `Runtime`
alone, never knowing which one it is; registry.py finds the subclasses by name.
"""

from __future__ import annotations

import functools
import os
import pwd
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

from ..ground.errors import ContainerKernelError

Progress = Callable[[str], None]

BIND_FORMAT = "SRC[:DST[:ro|rw]] with absolute paths and no ',' or ':' inside a path"


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside the container."""

    src: str
    dst: str
    read_only: bool = False
    # A name under which a runtime that cannot create `dst` may mount it instead (our own
    # folders: home, notebook, connection); None for user binds, which must go where asked.
    staging: str | None = None

    def spec(self) -> str:
        """The `SRC:DST[:ro]` form every runtime's bind flag understands."""
        return f"{self.src}:{self.dst}:ro" if self.read_only else f"{self.src}:{self.dst}"


def parse_bind(spec: str) -> Bind:
    """Parse a user's `SRC[:DST[:ro|rw]]`; malformed input gets one actionable line."""
    parts = spec.split(":")
    mode = "rw"
    if len(parts) == 3:
        *parts, mode = parts
    if not 1 <= len(parts) <= 2 or mode not in ("ro", "rw") or "," in spec:
        msg = f"Malformed bind {spec!r}: expected {BIND_FORMAT}."
        raise ContainerKernelError(msg)
    src = parts[0]
    dst = parts[1] if len(parts) == 2 else src
    if not (src.startswith(("/", "~")) and dst.startswith("/")):
        msg = f"Malformed bind {spec!r}: expected {BIND_FORMAT}."
        raise ContainerKernelError(msg)
    return Bind(src, dst, read_only=mode == "ro")


@dataclass(frozen=True)
class ExecRequest:
    """One command to run in one image, with the policy already decided by the launch layer.

    `env` holds the only variables that may reach the command (when `cleanenv`); `home` is the
    fake home (host directory bound over the home inside), or None for no home mount at all.
    """

    image: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[Bind] = ()
    home: Bind | None = None
    workdir: str | None = None
    cleanenv: bool = True
    gpu: str | None = None  # the GPU vendor, "nvidia" or "amd" (`auto` already decided)
    extra_args: Sequence[str] = ()
    # This launch's own folders: the container's /tmp and /var/tmp on the host (None: the
    # host's are shared); `private`, a folder of ours visible inside (already among `binds`
    # when it needs a bind of its own), and `host_private`, one the container never sees, where
    # a backend may keep files the runtime reads (values: never in argv, where `ps` shows them).
    tmp: str | None = None
    var_tmp: str | None = None
    private: Bind | None = None
    host_private: str | None = None


@dataclass(frozen=True)
class Command:
    """What a backend makes of a request: the runtime's argv and environment, the files the
    launch layer must write first (mode 0600) for the runtime or the command to read, and the
    folders it made outside the launch's own (mount points in a shared /tmp): they go when the
    launch's session ends."""

    argv: list[str]
    env: dict[str, str]
    files: Mapping[str, str] = field(default_factory=dict)
    created: Sequence[str] = ()


def with_user(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with `USER` set: ch-run refuses to start without it, and services often lack it."""
    return {"USER": pwd.getpwuid(os.getuid()).pw_name, **env}


class Store(Protocol):
    """Where a runtime pulls images to (images.cache.ImageCache is one): `root`, a folder of the
    user's own, and named locks that concurrent processes share."""

    root: Path

    def lock(self, name: str, waiting: str, progress: Progress) -> AbstractContextManager[None]:
        """Hold the lock `name`; when another process holds it, `progress(waiting)`, then wait."""
        ...


class Fact(NamedTuple):
    """One line of `container-kernel check`: ok (else FAIL), what it is about, and the detail
    (for a FAIL, the problem and what to do)."""

    ok: bool
    what: str
    detail: str


@dataclass(frozen=True)
class Runtime(ABC):
    """An installed container runtime: its executable and its flavour (what `--version` said).

    A subclass is one runtime backend. It sets the class attributes, fills the abstract members,
    and may override `pull`, `clean` and `doctor`; it is registered under `name` in the entry
    point group `container_kernel.runtimes` (registry.py). Instances come from `detect` (through
    `find_runtime`), never from a setting directly.
    """

    executable: str
    flavour: Any

    name: ClassVar[str]
    """The `runtime` setting that names it ("apptainer")."""
    executables: ClassVar[tuple[str, ...]]
    """The executables looked for on PATH, in this order ("ch-run")."""
    cache_kind: ClassVar[str | None] = None
    """What its pulled images are ("sif", "ch-image"): the cache keeps each kind apart, in the
    folder `<store root>/<cache_kind>`. None: it cannot pull."""
    cache_folders: ClassVar[tuple[str, ...]] = ()
    """Its own caches and temporary files under a store's root, besides its images (what `cache
    list` shows and `cache clean --all` empties)."""

    @classmethod
    def detect(cls, executable: str) -> Runtime:
        """The runtime `executable` is, its flavour read from `--version` once per binary."""
        realpath = os.path.realpath(executable)
        text = _version_output(realpath, os.stat(realpath).st_mtime_ns)
        return cls(executable, cls.parse_version(text))

    @classmethod
    @abstractmethod
    def parse_version(cls, text: str) -> Any:
        """The flavour, from what `--version` printed (its stdout, else its stderr): a value
        whose `str` names it ("apptainer 1.4.5"). A ContainerKernelError when it cannot tell.
        Called by `detect`."""

    @abstractmethod
    def exec_command(self, request: ExecRequest, host_env: Mapping[str, str]) -> Command:
        """The argv, the runtime process's environment and the files (written first, mode 0600)
        that run `request`; `host_env` is the environment it would otherwise inherit. Called by
        the launch layer (launch.plan), once per start."""

    @property
    @abstractmethod
    def forwards_signals(self) -> bool:
        """Whether the process the runtime's argv starts is a parent that forwards signals to
        the command (Apptainer's starter), rather than the command itself (ch-run execs it)."""

    @property
    @abstractmethod
    def mounts_in_private_tmp(self) -> bool:
        """Whether it can mount the notebook's folder under the private /tmp the launch binds
        (else the launch binds that folder elsewhere: launch.workdir_mount)."""

    def pull(
        self, reference: str, store: Store, pull_args: Sequence[str], progress: Progress
    ) -> Path:
        """Pull a registry image under `store.root / cache_kind`, its output to `progress` line
        by line (pulls.run_pull does that); the local image's path, once whole. Called by the
        image cache with the pull's lock held. The default: this runtime cannot pull."""
        raise ContainerKernelError(cannot_pull(self, reference))

    @classmethod
    def clean(
        cls, store: Store, named: set[Path], remove: Callable[[Path], int], progress: Progress
    ) -> int:
        """Free with `remove` what of its images no record `named` (old copies, the remains of
        a killed pull), leaving a pull under way alone; the bytes freed. Called by `cache
        clean` once per cache kind, without a runtime installed. The default frees nothing."""
        return 0

    def doctor(self, image: str, gpu: str | None, gpu_setting: str) -> list[Fact]:
        """What `container-kernel check` (faces/doctor.py) says of this runtime with `image`,
        after its version: how values reach the command, whether it gives `gpu` (a vendor, or
        None; the setting was `gpu_setting`). The default says nothing more."""
        return []

    def __str__(self) -> str:
        return f"{self.flavour} ({self.executable})"


def cannot_pull(runtime: Runtime, reference: str) -> str:
    """The one-line refusal of a runtime that cannot pull (cache_kind None)."""
    return (
        f"{runtime.name} cannot pull registry images ({reference}): pull it with another tool "
        "and set image to the local copy, or use a runtime that pulls (apptainer)."
    )


@functools.lru_cache(maxsize=16)
def _version_output(executable: str, _mtime_ns: int) -> str:
    """What `executable --version` says: run once per binary (again only if it changes)."""
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
    return out.stdout or out.stderr

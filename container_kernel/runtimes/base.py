"""What every runtime backend receives: a runtime-neutral description of one `exec`."""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..ground.errors import ContainerKernelError

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
    """What a backend makes of a request: the runtime's argv and environment, and the files the
    launch layer must write first (mode 0600) for the runtime or the command to read."""

    argv: list[str]
    env: dict[str, str]
    files: Mapping[str, str] = field(default_factory=dict)


def with_user(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with `USER` set: ch-run refuses to start without it, and services often lack it."""
    return {"USER": pwd.getpwuid(os.getuid()).pw_name, **env}

"""What every placement does: the one way from a face to a running container.

A placement is where one kernel's container runs (here, or as a Slurm job), for as long as the
kernel lives, restarts included; a `%%container` cell is a placement without a connection file.
Every face drives it the same way:

    launch = placement.prepare(command, connection_file=..., cwd=..., host_env=...)
    process = placement.start(launch)          # (or Popen by jupyter_client, then `started`)
    where = await placement.connect()          # a kernel: where it listens, if not where told
    placement.signal(process, signal.SIGINT)   # the kernel gets it exactly once
    status = placement.wait(process)           # once it and all it left are gone
    placement.end()                            # nothing of it stays

A new scheduler is a subclass in a module of its own, registered in `placements/__init__.py`.
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..ground import processes

if TYPE_CHECKING:
    from ..launch.plan import Launch
    from ..runtimes.base import Progress
    from ..settings import ContainerSettings


class Placement(ABC):
    """One kernel's (or cell's) container, placed somewhere; lives across restarts."""

    # True: the kernel binds the address and ports of the client's connection file (so a port
    # another process took meanwhile is a retry); False: they are chosen where the kernel runs,
    # and `connect` says which.
    listens_as_told = True
    # Whether the kernel's messages cross the network (transport encryption applies).
    crosses_network = False
    # Whether a cell's files come back (`-o` values): the container's folder is ours to read.
    brings_files_back = True
    # Whether a restart may take a pre-started container (standby.py).
    supports_standby = False
    # What Popen must give the started process (a scheduler's agent talks on stdin/stdout).
    pipes: Mapping[str, Any] = {}

    def __init__(
        self,
        settings: ContainerSettings,
        name: str,
        language: str = "",
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or "default"  # the kernel spec's (a persistent home is named by it)
        self.language = language  # the spec's: what it needs inside (languages.py)
        self.progress = progress  # where a registry image's pull reports
        self.spec_file: str | None = None  # its kernel.json, when there is one

    @abstractmethod
    def prepare(
        self,
        command: Sequence[str],
        *,
        connection_file: str | None,
        cwd: str,
        host_env: Mapping[str, str],
        named_env: Sequence[str] = (),
        files: Mapping[str, bytes] | None = None,
    ) -> Launch:
        """The launch of `command` (the argv inside) for a first start or a restart. A cell
        has no connection file; its `files` go in the folder `cell_files_inside` names."""

    def start(self, launch: Launch, **popen: Any) -> subprocess.Popen:
        """Start `launch` in a session of its own: a group signal to its starter reaches it
        only through `signal`."""
        process = subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            start_new_session=True,
            **{**popen, **self.pipes},
        )
        self.started(process)
        return process

    def started(self, process: subprocess.Popen) -> None:  # noqa: B027 (most need nothing)
        """`process` runs the launch (started by `start`, or by jupyter_client's Popen): hand
        it what it must be told."""

    async def connect(self) -> dict[str, Any] | None:
        """A kernel's start: where it listens, once it does, when that is not where the
        connection file said ({} when it is); None if the start failed (stderr says why)."""
        return {}

    @abstractmethod
    def signal(self, process: subprocess.Popen, signum: int) -> None:
        """Signal the kernel (or cell) so that it gets the signal exactly once."""

    def exited(self, pgid: int | None) -> None:
        """The started process exited (not yet reaped: its group id is still ours): kill what
        it left."""
        processes.kill_group(pgid)

    def wait_exited(self, process: subprocess.Popen) -> None:
        """Until the started process has exited and what it left is gone; it stays unreaped,
        for its owner's `process.wait()`."""
        processes.wait_unreaped(process.pid)
        self.exited(process.pid)

    def wait(self, process: subprocess.Popen) -> int:
        """Its exit status, once it and what it left are gone."""
        self.wait_exited(process)
        return process.wait()

    @abstractmethod
    def end(self, failed_start: bool = False) -> None:
        """The kernel (or cell) is gone for good: nothing of it stays. After a failed first
        start, what that start created goes too."""

    def start_standby(self) -> None:  # noqa: B027 (only placements with standbys)
        """After a start: the next start's container, waiting (supports_standby)."""

    def stop_standby(self) -> None:  # noqa: B027 (only placements with standbys)
        """A shutdown is coming: no standby waits or starts any more."""

    def take_standby(self) -> subprocess.Popen | None:
        """For a restart (just prepared): a waiting container now running the kernel, or None
        (start cold)."""
        return None

    def cell_file(self, name: str) -> bytes | None:
        """A file a cell left in its files folder (brings_files_back), or None."""
        return None

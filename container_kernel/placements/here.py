"""The container on this machine: a kernel's (for the provisioner, the installed spec's argv,
the Slurm node agent) or a `%%container` cell's.

It owns what lives as long as the kernel, across restarts: the session (private folder, /tmp,
mark), a temporary home, the private copy of the connection file, the standby; it builds each
start's launch and knows where a signal must go so that the kernel gets it exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..ground import processes
from ..ground.errors import ContainerKernelError
from ..ground.folders import file_identity, folder_identity
from ..images import kernel_check
from ..images.kernel_command import KernelCommand
from ..images.resolve import local_image
from ..launch import homes, languages, sessions
from ..launch.plan import Launch, cell_files, plan, private_mount
from ..launch.sessions import Session
from ..runtimes.base import Progress, parse_bind
from ..runtimes.registry import find_runtime
from ..settings import ContainerSettings
from . import guard, standby
from .base import Placement
from .standby import Standby

MAX_CONNECTION_FILE = 1 << 20  # bytes: a connection file has a few hundred


class Here(Placement):
    """The container side of one kernel (one kernel spec name, many restarts) or one cell."""

    supports_standby = True

    def __init__(
        self,
        settings: ContainerSettings,
        name: str,
        language: str = "",
        progress: Progress | None = None,
    ) -> None:
        super().__init__(settings, name, language, progress)
        self.session: Session | None = None
        self.temporary_home: Path | None = None
        self.created_home: Path | None = None  # a persistent home this kernel's start created
        self.connection_copy: Path | None = None  # the kernel's own copy, on the host
        self.files_folder: Path | None = None  # a cell's files, on the host
        self.forwards_signals = True
        self.standby: Standby | None = None
        self._last: tuple | None = None  # the last start's (command, launch, plan inputs)
        self._closing = False  # a shutdown was asked for: no standby starts
        self._lock = threading.Lock()  # (standbys start in a thread)

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
        if not os.path.isdir(cwd):
            msg = (
                f"The notebook's folder {cwd} is gone (moved or deleted): open the notebook "
                "again from where it is now."
            )
            raise ContainerKernelError(msg)
        if self.session is None:
            sessions.sweep()  # what crashed servers left
            self.session = Session.create()
            guard.hold(self.session.name, session=self.session.folder)  # if we die first
        else:
            self.session.kill_processes()  # a restart: what the last kernel left, setsid'd too
        if connection_file is not None:
            command = self._private_connection_file(command, connection_file)
        if files is not None:
            self.files_folder = cell_files(self.settings, self.session)
            for name, data in files.items():
                (self.files_folder / Path(name).name).write_bytes(data)
        home = self._home()
        languages.prepare_home(self.language, home)
        inside = homes.home_inside() if home is not None else None
        runtime = find_runtime(self.settings.runtime, self.settings.runtime_path)
        image = local_image(self.settings, self.progress, runtime)
        binds = []
        if connection_file is not None:  # a kernel: does its image run it? (once per image)
            progress = self.progress or (lambda line: None)
            command, binds = kernel_check.kernel_command(self.settings, image, command, progress)
        inputs = {
            "image": image,
            "extra_binds": binds,
            "cwd": cwd,
            "home": home,
            "host_env": dict(host_env),
            "named_env": list(named_env),
            "env_defaults": languages.environment(self.language, home_inside=inside, cwd=cwd),
        }
        launch = plan(self.settings, command, session=self.session, **inputs)
        self.forwards_signals = launch.runtime.forwards_signals
        self._last = (list(command), launch, inputs)
        return launch

    def cell_file(self, name: str) -> bytes | None:
        try:
            return (self.files_folder / name).read_bytes() if self.files_folder else None
        except OSError:
            return None

    def start_standby(self) -> None:
        """After a start: the next start's container, waiting (see standby.py)."""
        with self._lock:
            if self._closing or not self.settings.standby or None in (self.session, self._last):
                return
            self._discard_standby()
            command, launch, inputs = self._last
            self.standby = standby.start(self, command, launch, inputs, self._identity(inputs))

    def stop_standby(self) -> None:
        """At a shutdown request: the standby goes at once (still starting, it would compete
        with the kernel's exit for the CPUs), and none starts later."""
        with self._lock:
            self._closing = True
            if self.standby is not None:
                self.standby.discard(grace=0)
                sessions.kill_marked(self.session.with_variant(self.standby.variant).mark)
                self.standby = None

    def take_standby(self) -> subprocess.Popen | None:
        """For a restart (just prepared): the standby's process, now running the kernel, if
        it fits that launch; else None (it is discarded: start cold)."""
        with self._lock:
            waiting, self.standby = self.standby, None
            if waiting is None or self._last is None:
                return None
            command, launch, inputs = self._last
            parsed = KernelCommand.parse(command)
            now = standby.comparable(launch, self.session.mark)
            fits = waiting.fits(now, parsed, self._identity(inputs))
            fits = fits and not waiting.imported_changed(inputs["image"])
            if fits and waiting.hand_over(parsed.arguments):
                self.session = self.session.with_variant(waiting.variant)
                shutil.rmtree(waiting.fifo.parent, ignore_errors=True)  # (it has read the FIFO)
                return waiting.process
            self.standby = waiting
            self._discard_standby()
            return None

    def _identity(self, inputs: dict) -> tuple:
        """What a standby must find unchanged to stand in for a start with `inputs`: the image
        and kernel spec files, and which folders the notebook folder and every bind source are
        (replaced, repointed or deleted: a cold start, which sees the change or fails)."""
        sources = [parse_bind(spec).src for spec in self.settings.binds]
        sources += [bind.src for bind in inputs["extra_binds"]]
        return (
            file_identity(inputs["image"], self.spec_file),
            folder_identity(inputs["cwd"], *sources),
        )

    def _discard_standby(self) -> None:
        if self.standby is not None:
            self.standby.discard()
            sessions.kill_marked(self.session.with_variant(self.standby.variant).mark)
            self.standby = None

    def _private_connection_file(self, command: Sequence[str], connection_file: str) -> list[str]:
        """Copy the connection file into the session's folder that the kernel sees (its /tmp),
        and point the command there: binding Jupyter's runtime folder would show the kernel
        every other kernel's key and the server's token."""
        original = os.path.realpath(connection_file)
        info = os.stat(original)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONNECTION_FILE:
            msg = f"{connection_file} is not a connection file (a small JSON file)."
            raise ContainerKernelError(msg)
        folder = private_mount(self.settings, self.session)
        name = os.path.basename(original)
        copy = Path(folder.src, name)
        shutil.copyfile(original, copy)  # again at each restart: ports may be new
        copy.chmod(0o600)
        self.connection_copy = copy
        # The argv may name it as given (relative: MultiKernelManager's default), absolute or
        # resolved: each form, longest first, in one pass (one form may hold another).
        forms = sorted({connection_file, os.path.abspath(connection_file), original}, key=len)
        pattern = re.compile("|".join(re.escape(form) for form in reversed(forms)))
        inside = f"{folder.dst}/{name}"
        return [pattern.sub(lambda _: inside, arg) for arg in command]

    def _home(self) -> Path | None:
        if self.settings.home == "temporary":
            if self.temporary_home is None:  # kept across restarts, ends with the session
                self.temporary_home = homes.temporary_home(self.session.folder)
            return self.temporary_home
        if self.settings.home == "persistent" and self.created_home is None:
            folder = homes.persistent_home_path(self.settings.home_root, self.name)
            if not folder.exists():
                self.created_home = folder
        return homes.resolve_home(self.settings.home, self.settings.home_root, self.name)

    def signal(self, process: subprocess.Popen, signum: int) -> None:
        """A runtime that execs the kernel (ch-run) has no one to forward: its group gets the
        signal. A runtime parent that forwards signals (Apptainer's starter) must not get an
        interrupt too: it would reach the kernel twice. So SIGINT goes to the kernel and what
        it runs in its group (they carry the session's mark), other signals to the runtime
        parent alone; SIGKILL to the whole group."""
        targets = None
        if self.forwards_signals and signum != signal.SIGKILL:
            targets = [process.pid]
            if signum == signal.SIGINT and self.session is not None:
                targets = self.session.inside_processes(process.pid) or targets
        if targets:
            processes.signal_pids(targets, signum)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)

    def exited(self, pgid: int | None) -> None:
        """Kill what the runtime parent left, in its group and in sessions of their own."""
        processes.kill_group(pgid)
        if self.session is not None:
            self.session.kill_processes()

    def end(self, failed_start: bool = False) -> None:
        """The kernel is gone for good: end its session (processes, the standby's too, private
        folder, temporary home); after a failed first start, the empty home it created."""
        with self._lock:
            if self.standby is not None:
                self.standby.discard(grace=0)  # (a shutdown never waits for it)
                self.standby = None
            if self.session is not None:
                self.session.end()  # (every mark)
                guard.release(self.session.name)
            if failed_start and self.created_home is not None:
                with contextlib.suppress(OSError):
                    self.created_home.rmdir()  # only if still empty
            self.session = self.temporary_home = self.created_home = self.files_folder = None

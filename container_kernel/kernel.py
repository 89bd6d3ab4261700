"""One kernel's container, whoever starts it: the provisioner, or the launcher that an installed
kernel spec's argv runs when a client ignores provisioners (VS Code).

It owns what lives as long as the kernel, across restarts: the session (private folder, /tmp,
mark), a temporary home, the private copy of the connection file; it builds each start's launch
and knows where a signal must go so that the kernel gets it exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import guard, homes, kernel_check, languages, processes, sessions, standby
from .errors import ContainerKernelError
from .images import Progress
from .launch import Launch, local_image, plan, private_mount
from .runtimes import find_runtime, parse_bind
from .sessions import Session
from .settings import ContainerSettings
from .standby import Standby, file_identity, folder_identity

# An installed spec's argv runs the kernel through `python -m container_kernel.launcher`, so that
# clients that ignore provisioners get the container too (see launcher.py).
LAUNCHER_MODULE = "container_kernel.launcher"
MAX_CONNECTION_FILE = 1 << 20  # bytes: a connection file has a few hundred


def spec_argv(inner: Sequence[str], python: str | None = None) -> list[str]:
    """The argv an installed spec carries: `inner` (the kernel's argv inside) through the
    launcher, run by the absolute path of a Python that has this package (never PATH)."""
    return [
        python or sys.executable, "-m", LAUNCHER_MODULE, "--spec-dir", "{resource_dir}",
        "--connection-file", "{connection_file}", "--", *inner,
    ]  # fmt: skip


def command_inside(cmd: Sequence[str]) -> list[str]:
    """The kernel's own argv in a (formatted) spec argv: what follows the launcher's `--`; a
    spec of the previous format (the kernel's argv alone) as it is."""
    cmd = list(cmd)
    if len(cmd) > 2 and cmd[1:3] == ["-m", LAUNCHER_MODULE] and "--" in cmd:
        return cmd[cmd.index("--") + 1 :]
    return cmd


class KernelContainer:
    """The container side of one kernel (one kernel spec name, many restarts)."""

    def __init__(
        self,
        settings: ContainerSettings,
        kernel_name: str,
        language: str = "",
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress  # where a registry image's pull reports (images.py)
        self.kernel_name = kernel_name or "default"
        self.language = language  # the spec's: what it needs inside (languages.py)
        self.session: Session | None = None
        self.temporary_home: Path | None = None
        self.created_home: Path | None = None  # a persistent home this kernel's start created
        self.connection_copy: Path | None = None  # the kernel's own copy, on the host
        self.forwards_signals = True
        self.spec_file: str | None = None  # its kernel.json: a change discards a standby
        self.standby: Standby | None = None
        self._last: tuple | None = None  # the last start's (command, launch, plan inputs)
        self._lock = threading.Lock()  # (standbys start in a thread)

    def prepare(
        self,
        command: Sequence[str],
        *,
        connection_file: str | None,
        cwd: str,
        host_env: Mapping[str, str],
        named_env: Sequence[str] = (),
    ) -> Launch:
        """The launch of `command` (the kernel's argv inside) for a first start or a restart."""
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
        if connection_file is not None:  # (a cell has none)
            command = self._private_connection_file(command, connection_file)
        home = self._home()
        languages.prepare_home(self.language, home)
        inside = homes.home_inside() if home is not None else None
        runtime = find_runtime(self.settings.runtime, self.settings.runtime_path)
        image = local_image(self.settings, runtime, self.progress)
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

    def start_standby(self) -> None:
        """After a start: the next start's container, waiting (see standby.py)."""
        with self._lock:
            if not self.settings.standby or self.session is None or self._last is None:
                return
            self._discard_standby()
            command, launch, inputs = self._last
            self.standby = standby.start(self, command, launch, inputs, self._identity(inputs))

    def take_standby(self) -> subprocess.Popen | None:
        """For a restart (just prepared): the standby's process, now running the kernel, if
        it fits that launch; else None (it is discarded: start cold)."""
        with self._lock:
            waiting, self.standby = self.standby, None
            if waiting is None or self._last is None:
                return None
            command, launch, inputs = self._last
            parsed = standby.KernelCommand.parse(command)
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
            folder = homes.persistent_home_path(self.settings.home_root, self.kernel_name)
            if not folder.exists():
                self.created_home = folder
        return homes.resolve_home(self.settings.home, self.settings.home_root, self.kernel_name)

    def send_signal(self, runtime_pid: int, pgid: int | None, signum: int) -> bool:
        """Signal the kernel the way that reaches it once; False: the caller signals the group
        as usual (a runtime that execs the kernel, ch-run, has no one to forward).

        A runtime parent that forwards signals (Apptainer's starter) must not get an interrupt
        too: it would reach the kernel twice. So SIGINT goes to the kernel and what it runs in
        its group (they carry the session's mark), other signals to the runtime parent alone."""
        if not self.forwards_signals or signum == signal.SIGKILL:
            return False
        if signum == signal.SIGINT and self.session is not None and pgid:
            targets = self.session.inside_processes(pgid)
            if targets:
                processes.signal_pids(targets, signum)
                return True
        processes.signal_pids([runtime_pid], signum)
        return True

    def start(self, launch: Launch, **popen) -> subprocess.Popen:
        """Start `launch` in a session of its own (a group signal to its starter reaches it
        only through us); if we die first, the guard ends it (guard.py)."""
        return subprocess.Popen(
            launch.argv, env=launch.env, cwd=launch.cwd, start_new_session=True, **popen
        )

    def route_signal(self, process: subprocess.Popen, signum: int) -> None:
        """A signal for a kernel we started (`start`): as `send_signal` says, else its group."""
        if not self.send_signal(process.pid, process.pid, signum):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    def wait(self, process: subprocess.Popen) -> int:
        """Its exit status, once it and what it left (group, session) are gone."""
        processes.wait_unreaped(process.pid)
        self.runtime_exited(process.pid)  # its group id is still ours: nothing else has it
        return process.wait()

    def runtime_exited(self, pgid: int | None) -> None:
        """The runtime parent exited (not yet reaped): kill what it left, in its group and in
        sessions of their own."""
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
            self.session = self.temporary_home = self.created_home = None

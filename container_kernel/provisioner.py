"""`ContainerProvisioner`: jupyter_client's LocalProvisioner, with the kernel run in a container.

It wraps only what it must: the command and environment (pre_launch), where signals go
(send_signal), a start-up check that reports the runtime's own error, and the removal of what
a kernel leaves: its session (private folder, and every process that carries its mark).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float

from . import homes, processes, sessions
from .errors import ContainerKernelError, runtime_message
from .launch import plan, private_mount
from .sessions import Session
from .settings import ContainerSettings


class ContainerProvisioner(ContainerSettings, LocalProvisioner):
    """Starts the kernel spec's argv inside `image`, with a clean environment and a fake home."""

    startup_check_timeout = Float(
        10.0,
        config=True,
        help="""Seconds the start waits for the kernel to either listen on its ports or die.
        A kernel that dies at start-up fails the start with the runtime's own message.""",
    )

    _temporary_home: Path | None = None
    _session: Session | None = None  # private folder (connection-file copy, /tmp) and mark
    _restarting = False
    _stderr_tail: deque[str] | None = None
    _stderr_reader: threading.Thread | None = None
    _forwards_signals = True

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernel command (argv as the kernel spec gives it) in the runtime's exec."""
        kwargs = await super().pre_launch(**kwargs)
        cwd = self._kernel_cwd = os.path.abspath(kwargs.get("cwd") or os.getcwd())
        try:
            launch = self._plan(kwargs, cwd)
        except (ContainerKernelError, OSError) as err:
            message = str(err) if isinstance(err, ContainerKernelError) else _os_message(err)
            if not self._restarting or not self._has_restarter():
                await self.cleanup(restart=False)  # the session and a temporary home
                raise ContainerKernelError(message) from None
            # jupyter_client's restarter counts only restarts that launch something (it would
            # retry forever): launch a process that fails with the reason, so it gives up.
            failing = [sys.executable, "-c", "import sys; sys.exit(sys.argv[1])", message]
            kwargs.update(cmd=failing, cwd=cwd)
            return kwargs
        self._forwards_signals = launch.runtime.forwards_signals
        self.log.info("container-kernel: %s in %s, %s", self.kernel_id, self.image, launch.runtime)
        self.log.debug("container-kernel: %s", launch.argv)
        kwargs.update(cmd=launch.argv, env=launch.env, cwd=launch.cwd)
        return kwargs

    def _plan(self, kwargs: dict[str, Any], cwd: str):
        if getattr(self.parent, "transport", "tcp") != "tcp":
            msg = (
                "The ipc transport cannot reach into a container (its sockets sit beside the "
                "connection file, on the host): use tcp, the default."
            )
            raise ContainerKernelError(msg)
        if self._session is None:
            sessions.sweep()  # what crashed servers left
            self._session = Session.create()
        else:
            self._session.kill_processes()  # a restart: what the last kernel left, setsid'd too
        command = self._private_connection_file(self._command_inside(kwargs["cmd"]))
        return plan(
            self,
            command,
            cwd=cwd,
            home=self._home(),
            # launch_kernel() sets JPY_PARENT_PID on the runtime; the kernel needs it too.
            host_env={**kwargs["env"], "JPY_PARENT_PID": str(os.getpid())},
            session=self._session,
            named_env=list(self.kernel_spec.env),
        )

    def _has_restarter(self) -> bool:
        """Whether jupyter_client's restarter watches this kernel and will count a failed
        restart (a server's kernels); without one the caller must see the failure."""
        km = self.parent
        return bool(getattr(km, "autorestart", False) and getattr(km, "_restarter", None))

    def _command_inside(self, cmd: list[str]) -> list[str]:
        """Undo `format_kernel_cmd`'s rewrite of `python3` to the HOST interpreter."""
        spec_argv0 = self.kernel_spec.argv[0]
        if cmd and cmd[0] == sys.executable and spec_argv0 != sys.executable:
            return [spec_argv0, *cmd[1:]]
        return list(cmd)

    def _private_connection_file(self, command: list[str]) -> list[str]:
        """Copy the connection file into the session's folder that the kernel sees (its /tmp),
        and point the command there: binding Jupyter's runtime folder would show the kernel
        every other kernel's key and the server's token."""
        original = os.path.realpath(self.parent.connection_file)
        folder = private_mount(self, self._session)
        name = os.path.basename(original)
        copy = Path(folder.src, name)
        shutil.copyfile(original, copy)  # again at each restart: ports may be new
        copy.chmod(0o600)
        return [arg.replace(original, f"{folder.dst}/{name}") for arg in command]

    def _home(self) -> Path | None:
        if self.home != "temporary":
            kernel_name = getattr(self.parent, "kernel_name", "") or "default"
            return homes.resolve_home(self.home, self.home_root, kernel_name)
        if self._temporary_home is None:  # kept across restarts, ends with the session
            self._temporary_home = homes.temporary_home(self._session.folder)
        return self._temporary_home

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        """Start the runtime, then wait until the kernel listens or dies: a kernel that dies at
        start fails the start with the runtime's message (before jupyter_client's restarter
        starts, which would otherwise relaunch it in a loop)."""
        capture = kwargs.get("stderr") is None
        if capture:
            kwargs["stderr"] = subprocess.PIPE
        kwargs["preexec_fn"] = processes.die_with_parent_setup()  # a SIGKILLed server, too
        connection_info = await super().launch_kernel(cmd, **kwargs)
        self.cwd = self._kernel_cwd
        if capture:
            self._tee_stderr()
        status = await self._wait_for_listening()
        if status is None:
            self._restarting = False
            return connection_info
        message = await self._startup_failure(status)
        if self._restarting and self._has_restarter():  # it counts deaths, gives up at a limit
            self.log.error("container-kernel: %s", message)
            return connection_info
        await self.cleanup(restart=False)
        raise ContainerKernelError(message)

    def _tee_stderr(self) -> None:
        # The reader owns the pipe: LocalProvisioner.wait() must not close it under the thread.
        stream, self.process.stderr = self.process.stderr, None
        self._stderr_tail = deque(maxlen=20)
        self._stderr_reader = threading.Thread(
            target=_tee, args=(stream, self._stderr_tail), daemon=True
        )
        self._stderr_reader.start()

    async def _wait_for_listening(self) -> int | None:
        """None once the kernel listens on its heartbeat port; its exit status if it dies first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_check_timeout
        while loop.time() < deadline:
            status = await self.poll()
            if status is not None or await self._kernel_listening():
                return status
            await asyncio.sleep(0.05)
        return None

    async def _startup_failure(self, status: int) -> str:
        if self._stderr_reader is not None:  # read the runtime's last words first
            await asyncio.to_thread(self._stderr_reader.join, 2)
        detail = runtime_message(self._stderr_tail or ())
        return f"Kernel in {self.image} exited at start (status {status}): {detail}"

    async def _kernel_listening(self) -> bool:
        """True once the kernel's heartbeat port accepts connections (it has bound its sockets)."""
        info = self.connection_info
        if info.get("transport", "tcp") != "tcp" or not info.get("hb_port"):
            return True
        try:
            _, writer = await asyncio.open_connection(info["ip"], info["hb_port"])
        except OSError:
            return False
        writer.close()
        return True

    async def poll(self) -> int | None:
        """As LocalProvisioner, but once the runtime parent has exited, and before it is reaped,
        kill what it left: its process group (see processes.py) and its session's processes."""
        if self.process and self.process.returncode is None and processes.exited(self.process.pid):
            processes.kill_group(self.pgid)
            if self._session is not None:
                self._session.kill_processes()
        return await super().poll()

    async def send_signal(self, signum: int) -> None:
        """A runtime that forwards signals (Apptainer's starter) must not get an interrupt too:
        it would reach the kernel twice. So SIGINT goes to the kernel and what it runs in its
        group (they carry the session's mark), other signals to the runtime parent alone, which
        forwards them. A runtime that execs the kernel (ch-run) has no one to forward: its group
        gets them, as usual."""
        status = await self.poll()  # (Popen.send_signal would reap the parent without our care)
        if status is None and self._forwards_signals and signum != signal.SIGKILL:
            if signum == signal.SIGINT and self._session is not None:
                processes.signal_pids(self._session.inside_processes(self.pgid), signum)
            else:
                self.process.send_signal(signum)
            return
        await super().send_signal(signum)

    async def cleanup(self, restart: bool = False) -> None:
        """End this kernel's session at shutdown (what it started, its private folder with a
        temporary home); keep it across a restart."""
        self._restarting = restart
        if not restart:
            if self._session is not None:
                self._session.end()
            self._temporary_home = self._session = None
        await super().cleanup(restart=restart)


def _os_message(err: OSError) -> str:
    """An OSError while preparing a start, as one line that says what failed and where."""
    where = f": {err.filename}" if err.filename else ""
    return f"Cannot prepare the kernel's files ({err.strerror or err}){where}."


def _tee(stream, tail: deque[str]) -> None:
    """Copy the runtime's stderr to ours line by line, keeping the last lines for error reports."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        sys.stderr.write(line)
    stream.close()

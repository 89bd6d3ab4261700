"""`ContainerProvisioner`: jupyter_client's LocalProvisioner, with the kernel run in a container.

It wraps only what it must: the command and environment (pre_launch), where signals go
(send_signal), a start-up check that reports the runtime's own error, and cleanup of the fake
home and of any process left in the kernel's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float

from . import homes
from .errors import ContainerKernelError, runtime_message
from .launch import plan
from .runtimes import Bind
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
    _stderr_tail: deque[str] | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernel command (argv as the kernel spec gives it) in the runtime's exec."""
        kwargs = await super().pre_launch(**kwargs)
        try:
            return self._containerise(kwargs)
        except ContainerKernelError as err:
            self.log.error("container-kernel: %s", err)
            raise

    def _containerise(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        cwd = os.path.abspath(kwargs.get("cwd") or os.getcwd())
        launch = plan(
            self,
            self._command_inside(kwargs["cmd"]),
            cwd=cwd,
            home=self._home(),
            # launch_kernel() sets JPY_PARENT_PID on the runtime; the kernel inside needs it too.
            host_env={**kwargs["env"], "JPY_PARENT_PID": str(os.getpid())},
            named_env=list(self.kernel_spec.env),
            extra_binds=self._connection_binds(),
        )
        self.log.info(
            "container-kernel: %s in %s with %s", self.kernel_id, self.image, launch.runtime
        )
        self.log.debug("container-kernel: %s", launch.argv)
        kwargs.update(cmd=launch.argv, env=launch.env, cwd=launch.cwd)
        self._kernel_cwd = cwd
        return kwargs

    def _command_inside(self, cmd: list[str]) -> list[str]:
        """Undo `format_kernel_cmd`'s rewrite of `python3` to the HOST interpreter."""
        spec_argv0 = self.kernel_spec.argv[0]
        if cmd and cmd[0] == sys.executable and spec_argv0 != sys.executable:
            return [spec_argv0, *cmd[1:]]
        return list(cmd)

    def _connection_binds(self) -> list[Bind]:
        """The connection file's folder, at its own path, so `{connection_file}` holds inside."""
        connection_file = getattr(self.parent, "connection_file", "")
        if not connection_file:
            return []
        folder = os.path.dirname(os.path.realpath(connection_file))
        return [Bind(folder, folder, staging="connection")]

    def _home(self) -> Path | None:
        if self.home != "temporary":
            kernel_name = getattr(self.parent, "kernel_name", "") or "default"
            return homes.resolve_home(self.home, self.home_root, kernel_name)
        if self._temporary_home is None:
            self._temporary_home = homes.temporary_home()
        return self._temporary_home

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        """Start the runtime, keeping a tail of its stderr (still echoed to the server's log)."""
        kwargs["stderr"] = subprocess.PIPE
        connection_info = await super().launch_kernel(cmd, **kwargs)
        self.cwd = self._kernel_cwd
        # The tee thread owns the pipe: LocalProvisioner.wait() must not close it under the thread.
        stream, self.process.stderr = self.process.stderr, None
        self._stderr_tail = deque(maxlen=20)
        threading.Thread(target=_tee, args=(stream, self._stderr_tail), daemon=True).start()
        return connection_info

    async def post_launch(self, **kwargs: Any) -> None:
        """Fail the start at once, with the runtime's message, if the kernel dies while starting."""
        await super().post_launch(**kwargs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_check_timeout
        while loop.time() < deadline:
            status = await self.poll()
            if status is not None:
                await asyncio.sleep(0.05)  # let the tee thread read the last lines
                message = self.startup_failure(status)
                self.log.error("container-kernel: %s", message)
                raise ContainerKernelError(message)
            if await self._kernel_listening():
                return
            await asyncio.sleep(0.05)

    def startup_failure(self, status: int) -> str:
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

    async def send_signal(self, signum: int) -> None:
        """Signal the runtime parent only: it forwards to the kernel. Signalling the whole
        group, as LocalProvisioner does, delivers an interrupt twice. SIGKILL takes the group."""
        if self.process and signum != signal.SIGKILL:
            self.process.send_signal(signum)
            return
        await super().send_signal(signum)

    async def cleanup(self, restart: bool = False) -> None:
        """Remove what the kernel leaves: orphans in its process group, a temporary home."""
        self._kill_group()
        if not restart and self._temporary_home is not None:
            homes.remove_home(self._temporary_home)
            self._temporary_home = None
        await super().cleanup(restart=restart)

    def _kill_group(self) -> None:
        """The kernel's own children outlive the runtime parent; its group still holds them."""
        if self.pgid and self.pgid != os.getpgid(0):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)


def _tee(stream, tail: deque[str]) -> None:
    """Copy the runtime's stderr to ours line by line, keeping the last lines for error reports."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        sys.stderr.write(line)
    stream.close()

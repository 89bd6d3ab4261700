"""The start-up watch: a kernel that dies while starting fails the start with its own words.

A mixin for the provisioner: the runtime's stderr is copied to the server's, its last lines
kept; the start waits until the kernel listens on its heartbeat port or dies, and a death
becomes one line that leads with the cause.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque

from tornado.web import HTTPError
from traitlets import Float
from traitlets.config import LoggingConfigurable

from ..ground.errors import ContainerKernelError, runtime_message

PORT_TAKEN = "Address already in use"
PORT_TAKEN_STATUS = -1000  # what _wait_for_listening returns for a kernel that said so


class KernelStartError(ContainerKernelError, HTTPError):
    """A start that failed, with its one-line cause. Also a tornado HTTPError, as gateway
    provisioners raise: Jupyter Server then sends the cause to the client (JupyterLab's dialog)
    instead of "Unhandled error"."""

    def __init__(self, message: str) -> None:
        HTTPError.__init__(self, 500, message, reason="Kernel start failed")
        self.message = message

    def __str__(self) -> str:
        return self.message


class StartupWatch(LoggingConfigurable):
    """Watches a start (for a LocalProvisioner: `self.process`, `self.poll`, `connection_info`)."""

    startup_check_timeout = Float(
        10.0,
        config=True,
        help="""Seconds the start waits for the kernel to either listen on its ports or die.
        A kernel that dies at start-up fails the start with the runtime's own message.""",
    )

    _stderr_tail: deque[str] | None = None
    _stderr_reader: threading.Thread | None = None

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
            if self._port_taken():
                return PORT_TAKEN_STATUS
            await asyncio.sleep(0.005)  # (a connect attempt: cheap)
        return None

    async def _ports_released(self, timeout: float = 3.0) -> None:
        """At a restart, until the last kernel's heartbeat port is free (a killed kernel closes
        its sockets a moment after it is gone): the new one binds the same ports, and its
        start-up check must not take the old one's port for the new kernel listening."""
        if not self.connection_info.get("hb_port"):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self._kernel_listening() and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def _port_taken(self) -> bool:
        """The kernel said a port was taken (jupyter_client picks them, the kernel binds them
        later: another process may take one meanwhile, jupyter_client#487): some ipykernels
        hang after saying so instead of exiting."""
        return any(PORT_TAKEN in line for line in self._stderr_tail or ())

    async def _startup_failure(self, status: int) -> str:
        if self._stderr_reader is not None:  # read the runtime's last words first
            await asyncio.to_thread(self._stderr_reader.join, 2)
        detail = runtime_message(self._stderr_tail or ())
        # The cause first: JupyterLab's error dialog cuts long messages off at the end.
        return f"{detail} (the kernel exited at start with status {status}; image {self.image})"

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


def _tee(stream, tail: deque[str]) -> None:
    """Copy the runtime's stderr to ours line by line, keeping the last lines for error reports."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        sys.stderr.write(line)
    stream.close()

"""`ContainerProvisioner`: jupyter_client's LocalProvisioner, with the kernel run in a container.

It wraps only what it must: the command and environment (pre_launch), where signals go
(send_signal), a start-up check that reports the runtime's own error, and the removal of what
a kernel leaves: its session (private folder, and every process that carries its mark).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner

from ..ground import processes
from ..ground.errors import ContainerKernelError
from ..launch.plan import Launch
from ..placements import placement_for
from ..placements.base import Placement
from ..placements.encryption import cannot_encrypt, spec_encrypts
from ..placements.slurm import PORTS
from ..settings import ContainerSettings
from .kernelspecs import command_inside
from .startup import PORT_TAKEN, PORT_TAKEN_STATUS, KernelStartError, StartupWatch

PORT_ATTEMPTS = 3
SHUTDOWN_WATCH = 1.0  # seconds
STANDBY_DELAY = 0.5  # seconds: the kernel's first replies go first
STANDBY_STARTER = ThreadPoolExecutor(1, thread_name_prefix="container-kernel-standby")


class ContainerProvisioner(ContainerSettings, StartupWatch, LocalProvisioner):
    """Starts the kernel spec's argv inside `image`, with a clean environment and a fake home."""

    _placement: Placement | None = None  # lives across restarts
    _restarting = False
    _client_ip: str | None = None  # the manager's own, before a placement's answer replaced it

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernel command (argv as the kernel spec gives it) in the runtime's exec."""
        if self._client_ip is None:
            self._client_ip = self.parent.ip
        self.parent.ip = self._client_ip  # (a restart: LocalProvisioner checks it is ours)
        placement = self._placement or self._new_placement()
        encrypt = (
            placement.crosses_network
            and self.encryption != "off"
            and spec_encrypts(self.kernel_spec)
        )
        if encrypt:  # (LocalProvisioner makes the keys; they go to the node with the key)
            kwargs["transport_encryption"] = "auto"
        kwargs = await super().pre_launch(**kwargs)
        cwd = self._kernel_cwd = os.path.abspath(kwargs.get("cwd") or os.getcwd())
        try:
            if placement.crosses_network and self.encryption == "required" and not encrypt:
                raise ContainerKernelError(cannot_encrypt())
            # (a registry image's first start pulls it, or waits for another kernel's pull:
            # not on the event loop, which every kernel of the server shares)
            launch = await asyncio.to_thread(self._plan, kwargs, cwd)
        except (ContainerKernelError, OSError) as err:
            message = str(err) if isinstance(err, ContainerKernelError) else _os_message(err)
            if not self._restarting or not self._has_restarter():
                await self._give_up(first_start=not self._restarting)
                raise KernelStartError(message) from None
            # jupyter_client's restarter counts only restarts that launch something (it would
            # retry forever): launch a process that fails with the reason, so it gives up.
            failing = [sys.executable, "-c", "import sys; sys.exit(sys.argv[1])", message]
            kwargs.update(cmd=failing, cwd=cwd if os.path.isdir(cwd) else "/")
            return kwargs
        where = launch.runtime or f"{self.placement} ({' '.join(launch.argv)})"
        self.log.info("container-kernel: %s in %s, %s", self.kernel_id, self.image, where)
        self.log.debug("container-kernel: %s", launch.argv)
        kwargs.update(cmd=launch.argv, env=launch.env, cwd=launch.cwd)
        return kwargs

    def _plan(self, kwargs: dict[str, Any], cwd: str) -> Launch:
        if getattr(self.parent, "transport", "tcp") != "tcp":
            msg = (
                "The ipc transport cannot reach into a container (its sockets sit beside the "
                "connection file, on the host): use tcp, the default."
            )
            raise ContainerKernelError(msg)
        return self._placement.prepare(
            command_inside(self._command_inside(kwargs["cmd"])),
            connection_file=self.parent.connection_file,
            cwd=cwd,
            # launch_kernel() sets JPY_PARENT_PID on the runtime; the kernel needs it too.
            host_env={**kwargs["env"], "JPY_PARENT_PID": str(os.getpid())},
            named_env=list(self.kernel_spec.env),
        )

    def _new_placement(self) -> Placement:
        name = getattr(self.parent, "kernel_name", "")
        language = self.kernel_spec.language or ""
        self._placement = placement_for(self, name, language, progress=self._progress)
        resource_dir = getattr(self.kernel_spec, "resource_dir", "")
        if resource_dir:
            self._placement.spec_file = os.path.join(resource_dir, "kernel.json")
        return self._placement

    def _progress(self, line: str) -> None:
        """A registry image's pull, in the server's log."""
        self.log.info("container-kernel: %s: %s", self.kernel_id, line)

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

    @property
    def _temporary_home(self) -> Path | None:
        return getattr(self._placement, "temporary_home", None)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        """Start the runtime, then wait until the kernel listens or dies: a kernel that dies at
        start fails the start with the runtime's message (before jupyter_client's restarter
        starts, which would otherwise relaunch it in a loop)."""
        for attempt in range(PORT_ATTEMPTS):
            info, message = await self._launch_once(cmd, dict(kwargs))
            if message is None:
                return info
            retry = (
                self._placement.listens_as_told and PORT_TAKEN in message and not self._restarting
            )
            if not retry or attempt + 1 == PORT_ATTEMPTS:
                break
            # jupyter_client picks ports here and the kernel binds them later: meanwhile another
            # process (a client's outgoing connection) may take one (jupyter_client#487).
            self.log.warning("container-kernel: %s; starting again on new ports", message)
            self._new_ports()
        if self._restarting and self._has_restarter():  # it counts deaths, gives up at a limit
            self.log.error("container-kernel: %s", message)
            return info
        await self._give_up(first_start=not self._restarting)
        raise KernelStartError(message)

    async def _launch_once(self, cmd: list[str], kwargs: dict[str, Any]):
        """(connection info, None) once the kernel listens; (info, the cause) if it died."""
        capture = kwargs.get("stderr") is None
        if capture:
            kwargs["stderr"] = subprocess.PIPE
        placement = self._placement
        kwargs.update(placement.pipes)  # (a scheduler's agent talks on stdin and stdout)
        taken = None
        if self._restarting and placement.supports_standby:
            await self._ports_released()
            taken = await asyncio.to_thread(placement.take_standby)
        if taken is not None:  # the standby runs the kernel now: it is our process
            self.process, self.pid = taken, taken.pid
            self.pgid = os.getpgid(taken.pid)
            connection_info = self.connection_info
        else:
            connection_info = await super().launch_kernel(cmd, **kwargs)
            placement.started(self.process)
        self.cwd = self._kernel_cwd
        if capture:
            self._tee_stderr()
        connection_info = await self._connect(connection_info)
        status = await self._wait_for_listening()
        if status is None:
            self._restarting = False
            self._prepare_standby()
            return connection_info, None
        if status == PORT_TAKEN_STATUS:  # it said so, and may hang: end it, then say why
            processes.kill_group(self.pgid)
            await asyncio.to_thread(placement.exited, self.pgid)
            status = await asyncio.to_thread(self.process.wait)
        return connection_info, await self._startup_failure(status)

    def _prepare_standby(self) -> None:
        """Soon after a start, the next start's container (see standby.py), from a thread of
        ours (a blocking KernelManager runs no event loop between its calls)."""
        placement = self._placement
        if self.standby and placement.supports_standby:
            timer = threading.Timer(
                STANDBY_DELAY, STANDBY_STARTER.submit, [placement.start_standby]
            )
            timer.daemon = True
            timer.start()

    def _new_ports(self) -> None:
        """Fresh ports for the same kernel: a new connection file, copied again."""
        km = self.parent
        km.cleanup_connection_file()
        for port in PORTS:
            setattr(km, port, 0)
        km.write_connection_file()
        self.connection_info = km.get_connection_info()
        shutil.copyfile(km.connection_file, self._placement.connection_copy)

    async def _connect(self, connection_info: dict) -> dict:
        """Where the kernel listens, when its placement chose (a node's address and ports);
        as it was when the kernel listens as told (or the start failed: stderr says why)."""
        try:
            ready = await self._placement.connect()
        except ContainerKernelError as err:
            await self._give_up(first_start=not self._restarting)
            raise KernelStartError(str(err)) from None
        if ready:
            ports = {k: v for k, v in ready.items() if k.endswith("_port")}
            connection_info.update(ip=ready["ip"], **ports)
            self.connection_info = connection_info
            self.parent.ip = ready["ip"]  # as jupyter_client reconciles it with the file
        return connection_info

    async def poll(self) -> int | None:
        """As LocalProvisioner, but once the runtime parent has exited, and before it is reaped,
        kill what it left: its process group (see processes.py) and its session's processes."""
        if self.process and self.process.returncode is None and processes.exited(self.process.pid):
            if self._placement is not None:
                # (a /proc scan, or scancel for a Slurm job: not on the server's event loop)
                await asyncio.to_thread(self._placement.exited, self.pgid)
            else:
                processes.kill_group(self.pgid)
        return await super().poll()

    async def send_signal(self, signum: int) -> None:
        """To the kernel exactly once (see the placement's `signal`), else as usual."""
        status = await self.poll()  # (Popen.send_signal would reap the parent without our care)
        if status is None and self._placement is not None and self.process is not None:
            self._placement.signal(self.process, signum)
            return
        await super().send_signal(signum)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """The kernel was asked to shut down: it exits within ~0.1 s. Look every 5 ms (up to
        SHUTDOWN_WATCH), so that jupyter_client, which polls every 0.1 s, finds it gone at its
        first look: a restart goes on that much sooner. (Not reaped: see poll.)"""
        await super().shutdown_requested(restart=restart)
        stopping = None
        if not restart and self._placement is not None:  # (meanwhile: the standby goes)
            stopping = asyncio.ensure_future(asyncio.to_thread(self._placement.stop_standby))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_WATCH
        while self.process and not processes.exited(self.process.pid) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        if stopping is not None:
            await stopping
        self._drop_undelivered_request()

    def _drop_undelivered_request(self) -> None:
        """A kernel that is there takes the request at once; one that crashed never does, and
        the request waits in the manager's control socket, which jupyter_client closes with a
        linger of 0.1 s: a restart's new kernel binds the same port within it (a standby's
        does), gets the dead kernel's shutdown request and exits ("Kernel died before replying
        to kernel_info", 1 restart in 3 after a crash). So nothing waits once we are here
        (jupyter_client 8.10's private `_control_socket`; to be reported upstream)."""
        control = getattr(self.parent, "_control_socket", None)
        if control is not None:
            control.linger = 0

    async def cleanup(self, restart: bool = False) -> None:
        """End this kernel's session at shutdown (what it started, its private folder with a
        temporary home); keep it across a restart."""
        self._restarting = restart
        if not restart:
            await self._end()
        await super().cleanup(restart=restart)

    async def _end(self, failed_start: bool = False) -> None:
        if self._placement is not None:
            await asyncio.to_thread(self._placement.end, failed_start=failed_start)
            self._placement = None

    async def _give_up(self, first_start: bool) -> None:
        """A start that failed: nothing of it stays (an empty fake home it made, too)."""
        await self._end(failed_start=first_start)
        if self.process is not None:
            if self.process.poll() is None:  # srun of a job given up
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe:
                    pipe.close()
        await self.cleanup(restart=False)
        self._forget_failed_start()

    def _forget_failed_start(self) -> None:
        """jupyter_client's MultiKernelManager keeps a kernel whose start raised in its
        `_pending_kernels` (`_add_kernel_when_ready` logs the error and returns), so Jupyter
        Server's shutdown of all kernels fails on it ("Kernel does not exist") and the server
        never stops on SIGTERM. Take it out (jupyter_client 8.10, to be reported upstream)."""
        pending = getattr(getattr(self.parent, "parent", None), "_pending_kernels", None)
        if isinstance(pending, dict):
            pending.pop(self.kernel_id, None)


def _os_message(err: OSError) -> str:
    """An OSError while preparing a start, as one line that says what failed and where."""
    where = f": {err.filename}" if err.filename else ""
    return f"Cannot prepare the kernel's files ({err.strerror or err}){where}."

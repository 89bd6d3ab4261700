"""A kernel as a Slurm job: the server's side of `launcher = "slurm"`.

The placement is a layer under the container: `srun [slurm_args] PYTHON -m container_kernel.node`
runs the same launch code on the compute node (node.py), which plans the runtime's argv there
(the runtime, the session and its private /tmp are the node's). The kernel's connection info,
key included, goes to the node on srun's stdin, never in argv or the environment; the node
answers with the ports the kernel bound there and its address. Signals go as messages on stdin
(an interrupt reaches the kernel once); closing stdin, or srun's death, ends the job. Each start
is a new job (`--job-name container-kernel-<id>`): a restart queues again, but no allocation
outlives its kernel, and `scancel --name` finds every job of ours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import guard, images
from .environment import container_environment
from .errors import ContainerKernelError
from .images import Progress
from .launch import Launch, check_image, local_image
from .runtimes import find_runtime
from .settings import ContainerSettings

# The srun process's environment: enough to find Python and the runtime on the node, nothing
# more. The server's own (JUPYTERHUB_API_TOKEN, JUPYTER_TOKEN) would go into the job's record,
# and a server that runs in a Slurm job itself would make srun a step of that job (SLURM_JOB_ID).
KEPT = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF", "LD_LIBRARY_PATH",
    "PYTHONPATH", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_PATH",
    "JUPYTER_PLATFORM_DIRS", "XDG_RUNTIME_DIR",
)  # fmt: skip
POLL = 2.0  # seconds between looks at a waiting job
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")  # (jupyter_client's)


def job_name() -> str:
    """A unique name: `squeue`/`scancel --name` find every job of ours by it."""
    return f"container-kernel-{uuid.uuid4().hex[:12]}"


def node_settings(settings: ContainerSettings) -> dict[str, Any]:
    """The settings the node's agent plans with (it runs the container where it is)."""
    return {
        name: getattr(settings, name)
        for name in ContainerSettings.class_traits(config=True)
        if name not in ("launcher", "locked")
    }


def server_side_image(settings: ContainerSettings, progress: Progress | None) -> str:
    """The image the node runs: a local one as it is (a shared file system: the node sees the
    same path), a registry one pulled here first (login nodes reach registries, compute nodes
    often do not) into an image_cache the nodes share."""
    if not images.is_reference(settings.image):
        return check_image(settings.image)
    return local_image(settings, find_runtime(settings.runtime, settings.runtime_path), progress)


def srun_launch(
    settings: ContainerSettings, name: str, cwd: str, host_env: Mapping[str, str]
) -> Launch:
    """`srun ... PYTHON -m container_kernel.node` and its short environment; `threads` asks
    for as many CPUs, unless slurm_args ask for a number themselves (theirs win)."""
    cpus = []
    if settings.threads and not any(
        arg in ("-c", "--cpus-per-task") or arg.startswith(("-c", "--cpus-per-task="))
        for arg in settings.slurm_args
    ):
        cpus = [f"--cpus-per-task={settings.threads}"]
    argv = [
        "srun", "--job-name", name, "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", *cpus,
        *settings.slurm_args, sys.executable, "-m", "container_kernel.node",
    ]  # fmt: skip
    return Launch(argv, {k: v for k, v in host_env.items() if k in KEPT}, cwd, None)


def cancel_argv(name: str) -> list[str]:
    return ["scancel", "--name", name]


def cancel(name: str) -> None:
    """No job of that name is left."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(cancel_argv(name), capture_output=True, check=False, timeout=POLL * 5)
    guard.release(name)


class SlurmCell:
    """A %%container cell as a Slurm job: its files and command go on srun's stdin, its output
    comes back on srun's, signals go as messages, a kill takes srun alone (its helper cancels
    the job; a group kill would leave it running) and the job by name."""

    def __init__(self, settings: ContainerSettings, home_name: str) -> None:
        self.settings = settings
        self.home_name = home_name
        self.name = job_name()
        self.stdin = None

    def launch(
        self, command: Sequence[str], files: Path, cwd: str, host_env, progress=None
    ) -> Launch:
        image = server_side_image(self.settings, progress)
        self.request = {
            "mode": "cell",
            "settings": {**node_settings(self.settings), "image": image},
            "kernel_name": self.home_name,
            "command": list(command),
            "files": {p.name: base64.b64encode(p.read_bytes()).decode() for p in files.iterdir()},
            "cwd": cwd,
            "named_values": {},
        }
        return srun_launch(self.settings, self.name, cwd, host_env)

    def start(self, process: subprocess.Popen) -> None:
        guard.hold(self.name, then=cancel_argv(self.name))  # if the kernel dies first
        self.stdin = process.stdin
        with contextlib.suppress(BrokenPipeError):  # srun refused: its stderr says why
            process.stdin.write(json.dumps(self.request).encode() + b"\n")
            process.stdin.flush()

    def send(self, pid: int, signum: int) -> None:
        if signum == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            cancel(self.name)
            return
        with contextlib.suppress(OSError, ValueError):
            self.stdin.write(json.dumps({"signal": int(signum)}).encode() + b"\n")
            self.stdin.flush()

    def end(self) -> None:
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()
        cancel(self.name)


class SlurmKernel:
    """One kernel's Slurm jobs (one per start), driven from the server."""

    forwards_signals = True
    session = None
    temporary_home = None

    def __init__(
        self,
        settings: ContainerSettings,
        kernel_name: str,
        log,
        language: str = "",
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.kernel_name = kernel_name or "default"
        self.language = language
        self.log = log
        self.job_name = ""
        self.server_ip = ""  # the manager's own address, before the node's replaced it
        self.last_ports: dict[str, int] = {}
        self.request: dict[str, Any] = {}
        self.process: subprocess.Popen | None = None

    def prepare(
        self,
        command: Sequence[str],
        *,
        connection_file: str,
        cwd: str,
        host_env: Mapping[str, str],
        named_env: Sequence[str] = (),
    ) -> Launch:
        """srun's argv and environment; the request for the node, sent once srun runs."""
        image = server_side_image(self.settings, self.progress)
        with open(connection_file) as handle:
            connection = json.load(handle)
        self.server_ip = self.server_ip or connection.get("ip", "127.0.0.1")
        # Ports are chosen on the node (0); a restart asks for the same ones again, so that
        # connected clients (a notebook's channels) find the new kernel where the old one was.
        ports = {port: self.last_ports.get(port, 0) for port in PORTS}
        connection = {**connection, **ports}
        if connection.get("transport", "tcp") != "tcp":
            msg = "A kernel on a compute node needs the tcp transport."
            raise ContainerKernelError(msg)
        self.cancel()  # a restart: the last start's job, if it is still there
        self.job_name = job_name()
        guard.hold(self.job_name, then=cancel_argv(self.job_name))  # if the server dies first
        values = container_environment(host_env, named=named_env)
        self.request = {
            "settings": {**node_settings(self.settings), "image": image},
            "kernel_name": self.kernel_name,
            "language": self.language,
            "command": list(command),
            "connection": connection,
            "connection_file": connection_file,  # as the command names it
            "cwd": cwd,
            "named_values": {k: values[k] for k in named_env if k in values},
        }
        return srun_launch(self.settings, self.job_name, cwd, host_env)

    async def connect(self, process: subprocess.Popen) -> dict[str, Any] | None:
        """Send the request, wait for the node's answer while the job queues; the connection
        info to use (node address, its ports), or None if srun exited (its stderr says why)."""
        self.process = process
        try:
            process.stdin.write(json.dumps(self.request).encode() + b"\n")
            process.stdin.flush()
        except BrokenPipeError:  # srun refused at once (a bad option): its stderr says why
            return None
        answer = asyncio.ensure_future(asyncio.to_thread(process.stdout.readline))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.slurm_start_timeout
        try:
            while not (await asyncio.wait({answer}, timeout=POLL))[0]:
                state, reason = await asyncio.to_thread(self.job_state)
                self.log.info(
                    "container-kernel: Slurm job %s: %s (%s)", self.job_name, state, reason
                )
                if loop.time() > deadline:
                    process.kill()
                    await asyncio.to_thread(self.cancel)
                    waited = (
                        f"Slurm kept the job waiting ({reason})"
                        if state == "PENDING"
                        else f"The Slurm job ({state or 'gone'}) gave no answer"
                    )
                    msg = (
                        f"{waited} for more than "
                        f"{self.settings.slurm_start_timeout:.0f} s: cancelled. Ask for fewer "
                        "resources (slurm_args) or raise slurm_start_timeout."
                    )
                    raise ContainerKernelError(msg)
            line = answer.result()
            if not line:
                return None
            reply = json.loads(line)
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            process.kill()
            msg = f"The Slurm job's start failed: {err}"
            raise ContainerKernelError(msg) from None
        if "error" in reply:
            msg = f"On the compute node: {reply['error']}"
            raise ContainerKernelError(msg)
        ready = reply["ready"]
        self.last_ports = {port: ready[port] for port in PORTS}
        job, node = ready.get("job"), ready["ip"]
        self.log.info("container-kernel: Slurm job %s (%s) on %s", job, self.job_name, node)
        return ready

    def job_state(self) -> tuple[str, str]:
        """(state, reason) of this kernel's job, from squeue; ('', '') once it is gone."""
        out = subprocess.run(
            ["squeue", "-h", "--name", self.job_name, "-o", "%T|%r"],
            capture_output=True, text=True, check=False, timeout=POLL * 5,
        )  # fmt: skip
        state, _, reason = out.stdout.strip().partition("|")
        return state, reason

    def cancel(self) -> None:
        """No job of this kernel's is left (scancel finds them by their unique name)."""
        if self.job_name:
            cancel(self.job_name)

    def send_signal(self, runtime_pid: int, pgid: int | None, signum: int) -> bool:
        """Signals go to the node as messages; SIGKILL to srun alone, whose helper cancels the
        job (a group kill would leave it running), and to the job by name."""
        if signum == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(runtime_pid, signal.SIGKILL)
            self.cancel()
            return True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.stdin.write(json.dumps({"signal": int(signum)}).encode() + b"\n")
            self.process.stdin.flush()
        return True

    def runtime_exited(self, pgid: int | None) -> None:
        self.cancel()

    def end(self, failed_start: bool = False) -> None:
        """Close the node's input (it ends the kernel and exits) and make sure the job is gone."""
        if self.process is not None and self.process.stdin:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # (its stdout goes with LocalProvisioner's wait)
        self.cancel()

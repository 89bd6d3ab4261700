"""A kernel (or a cell) as a Slurm job: the server's side of `placement = "slurm"`.

`srun [slurm_args] PYTHON -m container_kernel.placements.node` runs the node's agent (node.py),
which starts the container there through the same placement as a local kernel (Here): the
runtime, the session and its private /tmp are the node's. The kernel's connection info,
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
from typing import Any

from ..ground.errors import ContainerKernelError
from ..images.resolve import local_image
from ..launch.environment import container_environment
from ..launch.plan import Launch
from ..settings import ContainerSettings
from . import guard
from .base import Placement

# The srun process's environment: enough to find Python and the runtime on the node, nothing
# more. The server's own (JUPYTERHUB_API_TOKEN, JUPYTER_TOKEN) would go into the job's record,
# and a server that runs in a Slurm job itself would make srun a step of that job (SLURM_JOB_ID).
KEPT = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF", "LD_LIBRARY_PATH",
    "PYTHONPATH", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_PATH",
    "JUPYTER_PLATFORM_DIRS", "XDG_RUNTIME_DIR",
)  # fmt: skip
POLL = 2.0  # seconds between looks at a waiting job
NODE_AGENT = "container_kernel.placements.node"
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")  # (jupyter_client's)


def job_name() -> str:
    """A unique name: `squeue`/`scancel --name` find every job of ours by it."""
    return f"container-kernel-{uuid.uuid4().hex[:12]}"


def node_settings(settings: ContainerSettings) -> dict[str, Any]:
    """The settings the node's agent plans with (it runs the container where it is)."""
    return {
        name: getattr(settings, name)
        for name in ContainerSettings.class_traits(config=True)
        if name not in ("placement", "locked")
    }


def srun_launch(
    settings: ContainerSettings, name: str, cwd: str, host_env: Mapping[str, str]
) -> Launch:
    """`srun ... PYTHON -m container_kernel.placements.node` and its short environment;
    `threads` asks for as many CPUs, unless slurm_args ask for a number themselves."""
    cpus = []
    if settings.threads and not any(
        arg in ("-c", "--cpus-per-task") or arg.startswith(("-c", "--cpus-per-task="))
        for arg in settings.slurm_args
    ):
        cpus = [f"--cpus-per-task={settings.threads}"]
    argv = [
        "srun", "--job-name", name, "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1", *cpus,
        *settings.slurm_args, sys.executable, "-m", NODE_AGENT,
    ]  # fmt: skip
    return Launch(argv, {k: v for k, v in host_env.items() if k in KEPT}, cwd, None)


def cancel_argv(name: str) -> list[str]:
    return ["scancel", "--name", name]


class Slurm(Placement):
    """One kernel's Slurm jobs (one per start), or one cell's job, driven from the server.
    Signals go to the node's agent as messages; SIGKILL to srun alone, whose helper cancels
    the job (a group kill would leave it running), and to the job by name."""

    listens_as_told = False  # the node picks its ports and its address
    crosses_network = True
    brings_files_back = False  # a cell's folder is the node's
    pipes: Mapping[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job_name = ""
        self.last_ports: dict[str, int] = {}
        self.request: dict[str, Any] = {}
        self.process: subprocess.Popen | None = None

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
        """srun's argv and environment; the request for the node, sent once srun runs. A
        registry image is pulled here first (login nodes reach registries, compute nodes often
        do not) into an image_cache the nodes share; a local one must be on a shared path."""
        image = local_image(self.settings, self.progress)
        self.cancel()  # a restart: the last start's job, if it is still there
        self.job_name = job_name()
        guard.hold(self.job_name, then=cancel_argv(self.job_name))  # if we die first
        values = container_environment(host_env, named=named_env)
        self.request = {
            "settings": {**node_settings(self.settings), "image": image},
            "kernel_name": self.name,
            "language": self.language,
            "command": list(command),
            "cwd": cwd,
            "named_values": {k: values[k] for k in named_env if k in values},
            "variables": {"server": "SLURM_LAUNCH_NODE_IPADDR", "job": "SLURM_JOB_ID"},
        }
        if connection_file is None:  # a cell: its files and command; its output is srun's
            files = files or {}
            encoded = {name: base64.b64encode(data).decode() for name, data in files.items()}
            self.request.update(mode="cell", files=encoded)
        else:
            self.request.update(self._connection(connection_file))
        return srun_launch(self.settings, self.job_name, cwd, host_env)

    def _connection(self, connection_file: str) -> dict[str, Any]:
        """The connection info for the node, key included (never in argv or the environment,
        where `ps`, `scontrol` and job records would show it). Ports are chosen on the node
        (0); a restart asks for the same ones again, so that connected clients (a notebook's
        channels) find the new kernel where the old one was."""
        with open(connection_file) as handle:
            connection = json.load(handle)
        if connection.get("transport", "tcp") != "tcp":
            msg = "A kernel on a compute node needs the tcp transport."
            raise ContainerKernelError(msg)
        ports = {port: self.last_ports.get(port, 0) for port in PORTS}
        return {
            "connection": {**connection, **ports},
            "connection_file": connection_file,  # as the command names it
        }

    def started(self, process: subprocess.Popen) -> None:
        self.process = process
        with contextlib.suppress(BrokenPipeError):  # srun refused at once: stderr says why
            process.stdin.write(json.dumps(self.request).encode() + b"\n")
            process.stdin.flush()

    async def connect(self) -> dict[str, Any] | None:
        """Wait for the node's answer while the job queues: its address and the ports its
        kernel bound, or None if srun exited (its stderr says why)."""
        process = self.process
        answer = asyncio.ensure_future(asyncio.to_thread(process.stdout.readline))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.slurm_start_timeout
        try:
            while not (await asyncio.wait({answer}, timeout=POLL))[0]:
                state, reason = await asyncio.to_thread(self.job_state)
                self._report(f"Slurm job {self.job_name}: {state} ({reason})")
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
        self._report(f"Slurm job {ready.get('job')} ({self.job_name}) on {ready['ip']}")
        return ready

    def _report(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

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
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    cancel_argv(self.job_name),
                    capture_output=True, check=False, timeout=POLL * 5,
                )  # fmt: skip
            guard.release(self.job_name)

    def signal(self, process: subprocess.Popen, signum: int) -> None:
        if signum == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            self.cancel()
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.stdin.write(json.dumps({"signal": int(signum)}).encode() + b"\n")
            process.stdin.flush()

    def exited(self, pgid: int | None) -> None:
        super().exited(pgid)
        self.cancel()

    def end(self, failed_start: bool = False) -> None:
        """Close the node's input (it ends the kernel and exits) and make sure the job is gone."""
        if self.process is not None and self.process.stdin:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # (its stdout goes with its owner's wait)
        self.cancel()

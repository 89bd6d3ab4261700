"""Where the provisioner's signals go, shown on plain processes (deterministic, no kernel).

With a runtime parent that forwards signals, SIGTERM goes to it only, and SIGINT to the processes
started inside (they carry the session's mark) only: signalling the whole group would deliver
them twice. SIGKILL and cleanup take the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpec

from container_kernel.faces.provisioner import ContainerProvisioner
from container_kernel.ground.processes import exited as processes_exited
from container_kernel.launch.sessions import Session
from container_kernel.placements.here import Here


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def wait_dead(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


@pytest.fixture
def runtime_parent(tmp_path):
    """A parent with a child in its own new process group, as jupyter_client starts kernels:
    marked as Apptainer marks them (the parent under its env prefix, the child inside)."""
    session = Session.create(tmp_path)
    # Not `sh -c 'sleep 60 &'`: a shell's background job ignores SIGINT.
    parent = (
        "import os, subprocess, sys; env = dict(os.environ, CONTAINER_KERNEL_SESSION=sys.argv[1]);"
        "p = subprocess.Popen(['sleep', '60'], env=env); print(p.pid, flush=True); "
        "sys.exit(p.wait())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent, session.name],
        stdout=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "APPTAINERENV_CONTAINER_KERNEL_SESSION": session.name},
    )
    child = int(proc.stdout.readline())
    provisioner = ContainerProvisioner(
        kernel_id="k", kernel_spec=KernelSpec(argv=["python3"], language="python"), parent=None
    )
    provisioner.process, provisioner.pid, provisioner.pgid = proc, proc.pid, proc.pid
    provisioner._placement = Here(provisioner, "k")
    provisioner._placement.session = session
    yield provisioner, proc, child
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.stdout.close()
    proc.wait()


async def test_an_interrupt_goes_to_the_processes_inside_only(runtime_parent):
    provisioner, proc, child = runtime_parent
    await provisioner.send_signal(signal.SIGINT)
    assert wait_dead(child)
    assert proc.wait(timeout=5) == 256 - signal.SIGINT  # sys.exit(-2): the parent got none


async def test_other_signals_go_to_the_runtime_parent_only(runtime_parent):
    provisioner, proc, child = runtime_parent
    await provisioner.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert alive(child)  # LocalProvisioner's os.killpg would have reached it directly


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_runtime_that_execs_the_kernel_gets_the_group_signalled(runtime_parent, signum):
    provisioner, _, child = runtime_parent
    provisioner._placement.forwards_signals = False  # as ch-run: nobody forwards to children
    await provisioner.send_signal(signum)
    assert wait_dead(child)


async def test_signalling_a_dead_parent_still_removes_its_orphans(runtime_parent):
    provisioner, proc, child = runtime_parent
    os.kill(proc.pid, signal.SIGKILL)  # the kernel died (OOM...); nobody has polled yet
    while processes_exited(proc.pid) is False:
        time.sleep(0.01)
    await provisioner.send_signal(signal.SIGINT)  # what a graceful shutdown sends first
    assert wait_dead(child)


async def test_kill_takes_the_whole_group(runtime_parent):
    provisioner, _, child = runtime_parent
    await provisioner.kill()
    assert wait_dead(child)


async def test_poll_removes_orphans_once_the_runtime_parent_has_exited(runtime_parent):
    provisioner, proc, child = runtime_parent
    os.kill(proc.pid, signal.SIGTERM)  # the runtime parent exits; its child lives on in the group
    deadline = time.monotonic() + 5
    while alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive(child)
    assert await provisioner.poll() == -signal.SIGTERM
    assert wait_dead(child)

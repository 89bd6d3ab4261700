"""Where the provisioner's signals go, shown on plain processes (deterministic, no kernel).

Interrupts and SIGTERM go to the runtime parent only (it forwards them: signalling the whole
group would deliver them twice); SIGKILL and cleanup take the whole process group.
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

from container_kernel.processes import exited as processes_exited
from container_kernel.provisioner import ContainerProvisioner


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
def runtime_parent():
    """A parent with a child in its own new process group, as jupyter_client starts kernels."""
    # Not `sh -c 'sleep 60 &'`: a shell's background job ignores SIGINT.
    parent = (
        "import subprocess; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); "
        "p.wait()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, start_new_session=True
    )
    child = int(proc.stdout.readline())
    provisioner = ContainerProvisioner(
        kernel_id="k", kernel_spec=KernelSpec(argv=["python3"], language="python"), parent=None
    )
    provisioner.process, provisioner.pid, provisioner.pgid = proc, proc.pid, proc.pid
    yield provisioner, proc, child
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.stdout.close()
    proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signals_go_to_the_runtime_parent_only(runtime_parent, signum):
    provisioner, proc, child = runtime_parent
    await provisioner.send_signal(signum)
    proc.wait(timeout=5)
    assert alive(child)  # LocalProvisioner's os.killpg would have reached it directly


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_runtime_that_execs_the_kernel_gets_the_group_signalled(runtime_parent, signum):
    provisioner, _, child = runtime_parent
    provisioner._forwards_signals = False  # as ch-run: nobody would forward to the children
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

"""Nothing outlives its kernel, and the kernel does not outlive its server: on every runtime.

Run as root and as an unprivileged user (scripts/test-as-user).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager, KernelManager
from kernels import run, running_kernel

from container_kernel.errors import ContainerKernelError
from container_kernel.sessions import marked_processes, sessions_root

pytestmark = pytest.mark.lifecycle


def the_session(km) -> str:
    return km.provisioner._session.name


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pids, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_no_marked(mark: str, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in marked_processes(mark) if alive(p)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    return left


START_DAEMON = (
    "import subprocess; print(subprocess.Popen(['sleep', '300'], start_new_session=True).pid)"
)


@pytest.mark.parametrize("how", ["shutdown", "shutdown-now", "crash"])
async def test_a_new_session_started_in_the_kernel_dies_with_it(kernel_spec, notebook_dir, how):
    km = AsyncKernelManager(kernel_name=kernel_spec())
    await km.start_kernel(cwd=str(notebook_dir))
    mark = the_session(km)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        reply = await kc.execute(START_DAEMON, reply=True, timeout=30)
        assert reply["content"]["status"] == "ok"
        daemon = await _daemon_pid(kc)
        assert alive(daemon)
        assert os.getsid(daemon) == daemon  # a session of its own: outside the kernel's group
    finally:
        kc.stop_channels()
    if how == "crash":
        (kernel,) = [p for p in marked_processes(mark, inside_only=True) if p != daemon]
        os.kill(kernel, signal.SIGKILL)  # the kernel inside dies; nobody shut it down
        deadline = time.monotonic() + 15
        while await km.provisioner.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert wait_gone([daemon]) == []
        await km.shutdown_kernel(now=True)
    else:
        await km.shutdown_kernel(now=how == "shutdown-now")
        assert wait_gone([daemon]) == []
    assert wait_no_marked(mark) == []
    assert list(sessions_root().iterdir()) == []


async def _daemon_pid(kc) -> int:
    while True:
        msg = await kc.get_iopub_msg(timeout=10)
        if msg["msg_type"] == "stream":
            return int(msg["content"]["text"].split()[0])


def test_restart_ends_what_the_previous_kernel_started(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        daemon = int(run(kc, START_DAEMON))
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert wait_gone([daemon]) == []
        assert run(kc, "print(6 * 7)").strip() == "42"


SERVER = textwrap.dedent(
    """
    import json, sys, time
    from jupyter_client import KernelManager
    km = KernelManager(kernel_name=sys.argv[1])
    km.start_kernel(cwd=sys.argv[2])
    kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
    out = []
    kc.execute_interactive(
        sys.argv[3], timeout=30, output_hook=lambda m: out.append(m["content"].get("text", ""))
    )
    daemon = int("".join(out).split()[0])
    print(json.dumps({"session": km.provisioner._session.name, "daemon": daemon}), flush=True)
    time.sleep(600)
    """
)


def test_a_sigkilled_server_takes_its_kernel_along(kernel_spec, notebook_dir):
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, kernel_spec(), str(notebook_dir), START_DAEMON],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        started = json.loads(server.stdout.readline())
        mark, daemon = started["session"], [started["daemon"]]
        kernel = marked_processes(mark)
        assert set(daemon) < set(kernel)
        deadline = time.monotonic() + 20  # its standby (standby.py) too, once it is there
        while not (standby := set(marked_processes(mark, variants=True)) - set(kernel)):
            assert time.monotonic() < deadline, "no standby"
            time.sleep(0.1)
        os.kill(server.pid, signal.SIGKILL)  # crash, OOM kill: no shutdown at all
        server.wait(timeout=10)
        # the kernel, its standby and their runtimes go at once; the daemon (a session of its
        # own) at the next start of a container kernel, which ends the sessions of dead servers
        assert wait_gone((set(kernel) | standby) - set(daemon), timeout=10) == []
        assert [p for p in marked_processes(mark) if alive(p)] == daemon
        with running_kernel(kernel_spec("ck-next"), str(notebook_dir)) as (_, kc):
            run(kc, "print(1)")
        assert wait_gone(daemon, timeout=5) == []
        assert not (sessions_root() / mark).exists()
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def test_interrupt_reaches_what_the_cell_runs(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        msg_id = kc.execute("import os, time; t = time.monotonic(); os.system('sleep 15')")
        time.sleep(2)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert time.monotonic() - started < 5  # not the 13 s of the sleep left
        assert run(kc, "print(6 * 7)").strip() == "42"


def test_ipc_transport_is_refused_at_start(kernel_spec, notebook_dir):
    km = KernelManager(kernel_name=kernel_spec(), transport="ipc")
    with pytest.raises(ContainerKernelError, match="ipc transport cannot reach into a container"):
        km.start_kernel(cwd=str(notebook_dir))
    assert list(sessions_root().iterdir()) == []


def test_a_home_that_cannot_be_made_fails_in_one_line_leaving_nothing(
    kernel_spec, notebook_dir, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    km = KernelManager(kernel_name=kernel_spec(home=str(blocker / "home")))
    with pytest.raises(ContainerKernelError, match=r"^Cannot prepare the kernel's files .*a-file"):
        km.start_kernel(cwd=str(notebook_dir))
    assert list(sessions_root().iterdir()) == []


def test_a_notebook_under_the_home_leaves_no_folders_in_the_fake_home(
    kernel_spec, real_home_tmp, tmp_path
):
    notebook = real_home_tmp / "proj" / "sub"
    notebook.mkdir(parents=True)
    (notebook / "data.txt").write_text("here")
    homes = tmp_path / "homes"
    with running_kernel(kernel_spec("ck-sub", home_root=str(homes)), str(notebook)) as (_, kc):
        assert run(kc, "print(open('data.txt').read())").strip() == "here"
    assert [p.name for p in (homes / "ck-sub").iterdir()] == [".ipython"]  # no proj/sub


def test_a_failed_first_start_leaves_no_empty_fake_home(kernel_spec, notebook_dir, tmp_path):
    homes = tmp_path / "homes"
    name = kernel_spec("ck-broken-home", home_root=str(homes))
    spec_file = Path(os.environ["JUPYTER_PATH"], "kernels", name, "kernel.json")
    spec = json.loads(spec_file.read_text())
    spec["argv"][2] = "no_such_kernel_module"
    spec_file.write_text(json.dumps(spec))
    km = KernelManager(kernel_name=name)
    with pytest.raises(ContainerKernelError, match="No module named no_such_kernel_module"):
        km.start_kernel(cwd=str(notebook_dir))
    assert not (homes / name).exists()
    (homes / name).mkdir(parents=True)  # a home that was there before is kept
    with pytest.raises(ContainerKernelError, match="No module named no_such_kernel_module"):
        km.start_kernel(cwd=str(notebook_dir))
    assert (homes / name).is_dir()

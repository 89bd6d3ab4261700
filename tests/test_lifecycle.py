"""Nothing outlives its kernel, and the kernel does not outlive its server: on every runtime.

Run as root and as an unprivileged user (scripts/test-as-user).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager, KernelManager
from kernels import run, running_kernel

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch.sessions import marked_processes, sessions_root

pytestmark = pytest.mark.lifecycle


def the_session(km) -> str:
    return km.provisioner._placement.session.name


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


CLIENT = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, threading, time
    from jupyter_client import AsyncKernelManager, KernelManager
    name, cwd, code, how = sys.argv[1:5]

    def report(km, kc, execute):
        out = []
        execute(code, timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
        daemon = int("".join(out).split()[0])
        session = km.provisioner._placement.session.name
        print(json.dumps({"session": session, "daemon": daemon}), flush=True)
        time.sleep(float(os.environ.get("CLIENT_WAIT", "0")))  # (a standby comes meanwhile)
        if how == "raises":
            raise RuntimeError("the client's own error")
        if how == "returns":
            sys.exit(0)  # no shutdown, no cleanup
        if how == "sigkilled":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)  # until the test kills it

    if how == "async-sigkilled":
        async def main():
            km = AsyncKernelManager(kernel_name=name)
            await km.start_kernel(cwd=cwd)
            kc = km.client(); kc.start_channels(); await kc.wait_for_ready(timeout=60)
            out = []
            await kc.execute_interactive(
                code, timeout=30, output_hook=lambda m: out.append(m["content"].get("text", ""))
            )
            session = km.provisioner._placement.session.name
            started = {"session": session, "daemon": int("".join(out))}
            print(json.dumps(started), flush=True)
            time.sleep(float(os.environ.get("CLIENT_WAIT", "0")))
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
    else:
        km = KernelManager(kernel_name=name)
        km.start_kernel(cwd=cwd)
        kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
        report(km, kc, kc.execute_interactive)
    """
)


@pytest.mark.parametrize("how", ["sigkilled", "raises", "returns", "async-sigkilled"])
def test_a_client_that_dies_takes_everything_along(kernel_spec, notebook_dir, how):
    """Whatever way a client process ends without a shutdown (a server or script SIGKILLed, a
    script that raises or returns), its kernel, standby, what the kernel started in a session of
    its own, their runtimes and the session folder (the key's copy) go within seconds, and
    nothing holds the client's stdout and stderr open (a caller waiting for EOF is not stuck).
    Real Apptainer drops the parent-death signal: the guard does this (guard.py)."""
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, kernel_spec(), str(notebook_dir), START_DAEMON, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CLIENT_WAIT": "3"},
    )
    try:
        started = json.loads(client.stdout.readline())
        mark, daemon = started["session"], started["daemon"]
        everything = set(marked_processes(mark, variants=True))
        assert daemon in everything
        # the client ends; its pipes reach EOF once nothing of the kernel holds them
        _, err = client.communicate(timeout=20)
        if how == "raises":
            assert "the client's own error" in err
        assert wait_gone(everything, timeout=10) == []
        assert marked_processes(mark, variants=True) == []
        deadline = time.monotonic() + 5  # (the guard removes the folder once all is dead)
        while (sessions_root() / mark).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (sessions_root() / mark).exists()
    finally:
        client.kill()
        client.wait()
        client.stdout.close()  # (what it left may hold the pipes: never wait for their EOF)
        client.stderr.close()


# (jupyter_client leaves the worker thread's event loop open: gone with the test, not later)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_kernel_started_in_a_thread_lives_as_long_as_its_process(kernel_spec, notebook_dir):
    """A blocking KernelManager started in a worker thread (notebooks run in parallel threads):
    the kernel lives on once the thread has ended."""
    started = {}

    def start():
        started["km"] = km = KernelManager(kernel_name=kernel_spec())
        km.start_kernel(cwd=str(notebook_dir))

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    km = started["km"]
    kc = km.client()
    kc.start_channels()
    try:
        time.sleep(2)  # a kernel that dies with its thread is dead by now
        kc.wait_for_ready(timeout=60)
        assert run(kc, "print(6 * 7)").strip() == "42"
        assert km.is_alive()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        started.clear()
        km = kc = None
        gc.collect()


def test_a_restart_after_a_crash_starts_a_kernel_that_stays(kernel_spec, notebook_dir):
    """jupyter_client's restart sends the crashed kernel a shutdown request that no one takes;
    the new kernel (a standby's, at once) must not get it and exit. Three crashes in a row:
    before the fix, about one restart in three died ("Kernel died before replying")."""
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        for crash in range(3):
            run(kc, "x = 1")
            time.sleep(1.5)  # the standby is ready
            kc.execute("import os; os._exit(1)")
            deadline = time.monotonic() + 10
            while km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not km.is_alive()
            km.restart_kernel(now=False)  # as JupyterLab's restart of a dead kernel
            kc.wait_for_ready(timeout=60)
            assert run(kc, f"print({crash})").strip() == str(crash)
            time.sleep(0.3)
            assert km.is_alive(), f"the kernel after crash {crash + 1} exited"


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

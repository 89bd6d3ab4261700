"""Soak: kernel lifecycles again and again, on both runtimes, and nothing left behind.

Each test ends by checking for leaks: processes of ours (carrying a session mark or started by a
kernel manager of ours), zombie children, open file descriptors, session folders and
connection-file copies. CI runs `--soak-cycles 3` (the default); a long run:
`pytest -m soak --soak-cycles 50`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from jupyter_client import AsyncKernelManager
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_event_loop
from kernels import KernelError, run, running_kernel
from traitlets.config import Config

pytestmark = pytest.mark.soak

MARKER = b"CONTAINER_KERNEL_SESSION"
CONCURRENT_KERNELS = 16
FD_TOLERANCE = 2  # one-off descriptors, not one per kernel or cycle
SERVER_DEATH_TIMEOUT = 15

INTERRUPTIBLE = """
import time
hits = 0
try:
    print('sleeping', flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    hits += 1
    try:
        time.sleep(1)  # a second, forwarded SIGINT would land here
    except KeyboardInterrupt:
        hits += 1
print('interrupts', hits)
"""

SERVER = """
import json, sys, time, uuid
from pathlib import Path
from jupyter_client import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_event_loop

name, cwd = sys.argv[1:3]
connection_file = Path(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")
km = KernelManager(kernel_name=name, connection_file=str(connection_file))
km.start_kernel(cwd=cwd)
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
print(json.dumps({"runtime": km.provisioner.pid, "connection_file": km.connection_file}),
      flush=True)
time.sleep(600)
"""


# --- the tests ----------------------------------------------------------------------------------


def test_start_execute_interrupt_restart_shutdown(kernel_spec, notebook_dir, soak_cycles):
    name = kernel_spec("ck-soak")
    leaks = Leaks.watch()
    for cycle in range(soak_cycles):
        with running_kernel(name, str(notebook_dir)) as (km, kc):
            leaks.saw(km)
            assert run(kc, "print(6 * 7)").strip() == "42", f"cycle {cycle}"
            output = _interrupt_a_running_cell(km, kc)
            assert "interrupts 1" in output, f"cycle {cycle}: {output!r}"
            assert run(kc, "print('after the interrupt')").strip() == "after the interrupt"
            old_pid = km.provisioner.pid
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            assert km.provisioner.pid != old_pid
            # A fresh kernel. (Not a NameError: after an error, ipykernel aborts the requests
            # that reach it within a moment, without running them.)
            assert run(kc, "print('hits' in globals())").strip() == "False"
        leaks.check(f"after cycle {cycle}")


async def test_a_killed_kernel_is_seen_dead_and_restarted(kernel_spec, notebook_dir, soak_cycles):
    # What Jupyter Server runs: its restarter polls the kernel and restarts a dead one.
    config = Config()
    config.KernelRestarter.time_to_dead = 0.5  # poll often, so that the test is quick
    # Kills come sooner than its "stable start" time: each counts as one more failed restart.
    config.KernelRestarter.restart_limit = soak_cycles + 1
    km = AsyncIOLoopKernelManager(
        kernel_name=kernel_spec("ck-soak-kill"), connection_file=_connection_file(), config=config
    )
    leaks = Leaks.watch()
    await km.start_kernel(cwd=str(notebook_dir))
    try:
        leaks.saw(km)
        restarts: list[float] = []  # (the restarter exists once the kernel has started)
        km.add_restart_callback(lambda: restarts.append(time.monotonic()), "restart")
        km.add_restart_callback(lambda: restarts.append(-1.0), "dead")
        for cycle in range(soak_cycles):
            kc = km.client()  # the restarter may pick new ports: a new client each time
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=60)
                assert (await _arun(kc, "print(6 * 7)")).strip() == "42"
            finally:
                kc.stop_channels()
            kernels = _kernel_processes(km.provisioner.pid)
            assert len(kernels) == 1, f"cycle {cycle}: kernel processes {kernels}"
            old_runtime = km.provisioner.pid
            seen = len(restarts)
            os.kill(kernels[0], signal.SIGKILL)
            assert await _until(lambda seen=seen: len(restarts) > seen, timeout=20), (
                f"cycle {cycle}: the restarter did not see the kernel die"
            )
            assert restarts[-1] > 0, f"cycle {cycle}: the restarter gave up on the kernel"
            assert await _until(lambda pid=kernels[0]: not _alive(pid), timeout=5)
            assert await _until(lambda old=old_runtime: km.provisioner.pid != old, timeout=60)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            assert (await _arun(kc, "print('alive')")).strip() == "alive"
        finally:
            kc.stop_channels()
    finally:
        await km.shutdown_kernel(now=True)
    assert len(restarts) == soak_cycles
    await leaks.acheck()


def test_a_killed_server_takes_its_kernel_along(kernel_spec, notebook_dir, soak_cycles):
    name = kernel_spec("ck-soak-server")
    leaks = Leaks.watch()
    for cycle in range(soak_cycles):
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, name, str(notebook_dir)],
            stdout=subprocess.PIPE,
        )
        leaks.owners.add(server.pid)
        try:
            ready, _, _ = select.select([server.stdout], [], [], 90)
            assert ready, f"cycle {cycle}: the server did not start its kernel"
            started = json.loads(server.stdout.readline())
            leaks.saw()
            leaks.connection_files.add(started["connection_file"])
            tree = _descendants(server.pid)
            kernels = _kernel_processes(started["runtime"])
            assert len(kernels) == 1, f"cycle {cycle}: kernel processes {kernels}"
        finally:
            server.kill()
            server.wait()
            server.stdout.close()
        assert _wait_gone(kernels, SERVER_DEATH_TIMEOUT) == [], (
            f"cycle {cycle}: the kernel outlived its SIGKILLed server by {SERVER_DEATH_TIMEOUT} s"
        )
        assert _wait_gone(tree, 5) == [], f"cycle {cycle}: the runtime outlived its server"
        # Jupyter leaves a killed server's connection file; the next server's start ends its
        # session (folder and marked processes).
        Path(started["connection_file"]).unlink(missing_ok=True)
        with running_kernel(name, str(notebook_dir)) as (km, kc):
            leaks.saw(km)
            assert run(kc, "print('next server')").strip() == "next server"
        leaks.check(f"after cycle {cycle}")


async def test_concurrent_kernels_share_one_persistent_home(
    kernel_spec, notebook_dir, jupyter_dirs
):
    name = kernel_spec("ck-soak-many")
    leaks = Leaks.watch()
    kms = [
        AsyncKernelManager(kernel_name=name, connection_file=_connection_file())
        for _ in range(CONCURRENT_KERNELS)
    ]
    try:
        started = await asyncio.gather(
            *(km.start_kernel(cwd=str(notebook_dir)) for km in kms), return_exceptions=True
        )
        failed = [repr(result) for result in started if isinstance(result, BaseException)]
        assert not failed, f"{len(failed)} of {CONCURRENT_KERNELS} kernels did not start: {failed}"
        for km in kms:
            leaks.saw(km)
        homes = await asyncio.gather(*(_write_in_home(km, i) for i, km in enumerate(kms)))
    finally:
        await asyncio.gather(
            *(km.shutdown_kernel(now=True) for km in kms if km.has_kernel), return_exceptions=True
        )
    assert len(set(homes)) == 1  # one home for all
    host_home = jupyter_dirs["JUPYTER_DATA_DIR"] / "container-kernel" / "homes" / name
    written = {p.name: p.read_text() for p in host_home.glob("kernel-*")}
    assert written == {f"kernel-{i}": str(i) for i in range(CONCURRENT_KERNELS)}
    await leaks.acheck()


# --- helpers -----------------------------------------------------------------------------------


def _connection_file() -> str:
    """Where Jupyter Server puts connection files (a standalone KernelManager uses /tmp)."""
    return str(Path(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json"))


def _interrupt_a_running_cell(km, kc) -> str:
    """Run INTERRUPTIBLE, interrupt it once it sleeps; its stdout."""
    msg_id = kc.execute(INTERRUPTIBLE)
    text: list[str] = []
    interrupted = False
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=30)
        except queue.Empty:
            pytest.fail(f"the cell went quiet (interrupted: {interrupted}): {''.join(text)!r}")
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            text.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        if not interrupted and "sleeping" in "".join(text):
            km.interrupt_kernel()
            interrupted = True
    reply = kc.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == msg_id
    return "".join(text)


async def _arun(kc, code: str, timeout: float = 60) -> str:
    """`kernels.run` for an async client."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    if reply["content"]["status"] != "ok":
        raise KernelError(reply["content"].get("ename", "error"))
    return "".join(out)


async def _write_in_home(km, index: int) -> str:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        code = (
            "import os; home = os.environ['HOME']; "
            f"open(os.path.join(home, 'kernel-{index}'), 'w').write('{index}'); print(home)"
        )
        return (await _arun(kc, code)).strip()
    finally:
        kc.stop_channels()


async def _until(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _processes() -> dict[int, tuple[str, int]]:
    """pid: (state, parent pid) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry)] = (fields[0], int(fields[1]))
    return found


def _alive(pid: int) -> bool:
    state = _processes().get(pid, ("X", 0))[0]
    return state not in "ZX"


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for child, (_, parent) in _processes().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _kernel_processes(runtime_pid: int) -> list[int]:
    """The kernels (python3 -m ipykernel_launcher, or a standby that became one) at or below the
    runtime's process: the runtime itself for ch-run, which execs the kernel."""
    kernels = []
    for pid in _descendants(runtime_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # (a kernel a standby became runs it as `python3 -c BOOT FIFO '' ipykernel_launcher`)
        if argv[1:3] == [b"-m", b"ipykernel_launcher"] or (
            argv[1:2] == [b"-c"] and b"ipykernel_launcher" in argv[3:]
        ):
            kernels.append(pid)
    return kernels


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _fd_count() -> int:
    gc.collect()  # sockets and pipes of dropped clients close when collected
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Leaks:
    """What a test's kernels may leave behind, compared with before the test."""

    owners: set[int]  # processes whose kernels these are (this one, a test's "server")
    processes: set[int]  # ours already, before the test
    zombies: set[int]
    fds: int
    sessions: set[bytes] = field(default_factory=set)  # session marks seen
    connection_files: set[str] = field(default_factory=set)

    @classmethod
    def watch(cls) -> Leaks:
        # Made once per process, not per kernel: zmq's shared context, and the event loop that
        # runs a blocking KernelManager's coroutines.
        zmq.Context.instance()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            ensure_event_loop()
        leaks = cls(owners={os.getpid()}, processes=set(), zombies=set(), fds=0)
        leaks.processes, leaks.zombies, leaks.fds = (
            set(leaks._ours()),
            set(_zombie_children()),
            _fd_count(),
        )
        return leaks

    def saw(self, km=None) -> None:
        """Note the sessions and connection file of running kernels."""
        if _sessions_root().is_dir():
            self.sessions.update(p.name.encode() for p in _sessions_root().iterdir())
        if km is not None:
            self.connection_files.add(km.connection_file)

    def check(self, when: str = "", timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while (found := self._found()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not found, f"left behind {when}: {found}"

    async def acheck(self, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while (found := self._found()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not found, f"left behind: {found}"

    def _found(self) -> dict[str, object]:
        self.saw()
        found: dict[str, object] = {}
        if processes := sorted(set(self._ours()) - self.processes):
            found["processes"] = {pid: _cmdline(pid) for pid in processes}
        if zombies := sorted(set(_zombie_children()) - self.zombies):
            found["zombie children"] = zombies
        if (fds := _fd_count()) > self.fds + FD_TOLERANCE:
            found["open fds"] = f"{self.fds} before, {fds} now: {_fds()}"
        if _sessions_root().is_dir() and (folders := sorted(_sessions_root().iterdir())):
            found["session folders"] = [str(p) for p in folders]
        if copies := self._connection_file_copies():
            found["connection files"] = copies
        return found

    def _ours(self) -> list[int]:
        """Processes whose environment holds a session mark seen here, or which a kernel
        manager of ours started (their JPY_PARENT_PID is ours, or a server's)."""
        owners = {str(pid).encode() for pid in self.owners}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for variable in environ:
                name, _, value = variable.partition(b"=")
                marked = name == MARKER or name.endswith(b"_" + MARKER)
                if (marked and value in self.sessions) or (
                    name == b"JPY_PARENT_PID" and value in owners
                ):
                    found.append(int(entry))
                    break
        return found

    def _connection_file_copies(self) -> list[str]:
        """Files named as our connection files in the runtime folder (the sessions below it
        included) or in ch-run's staging folder under $TMPDIR."""
        names = {Path(f).name for f in self.connection_files}
        places = [Path(jupyter_runtime_dir())]
        places += Path(os.environ.get("TMPDIR", "/tmp")).glob(".container-kernel-*")
        return sorted(
            str(path)
            for place in places
            for path in place.rglob("kernel-*.json")
            if path.name in names
        )


def _sessions_root() -> Path:
    return Path(jupyter_runtime_dir(), "container-kernel")


def _zombie_children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (state, parent) in _processes().items() if parent == me and state == "Z"]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _fds() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return sorted(targets)

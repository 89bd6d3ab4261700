"""What /proc says about the processes a benchmark started: trees, resident memory, CPU, and
what is left behind.

A kernel's processes are its runtime parent (the process jupyter_client started), everything
descended from it and everything in its session (setsid by jupyter_client); a standby or any
other process our code keeps is whatever else descends from this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
MARKER = (
    "CONTAINER_KERNEL_SESSION"  # (container_kernel.launch.sessions: every process inside has it)
)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    ticks: int  # user + system CPU time, in clock ticks
    rss: int  # bytes


def snapshot() -> dict[int, Proc]:
    """Every live process (not zombies) that can be read now."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # (the name may hold spaces and parens)
        if fields[0] in "ZX":
            continue
        procs[int(entry)] = Proc(
            pid=int(entry),
            ppid=int(fields[1]),
            sid=int(fields[3]),
            state=fields[0],
            ticks=int(fields[11]) + int(fields[12]),
            rss=int(fields[21]) * PAGE,
        )
    return procs


def descendants(root: int, procs: dict[int, Proc]) -> set[int]:
    """`root`'s descendants (not `root`)."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kernel_tree(runtime_pid: int, procs: dict[int, Proc]) -> set[int]:
    """A kernel's processes: the runtime parent, its descendants, its session's processes and
    theirs."""
    pids = {runtime_pid} & procs.keys()
    pids |= {proc.pid for proc in procs.values() if proc.sid == runtime_pid}
    for pid in list(pids):
        pids |= descendants(pid, procs)
    return pids


def rss_mb(pids: set[int], procs: dict[int, Proc]) -> float:
    return sum(procs[pid].rss for pid in pids if pid in procs) / 2**20


def pss_mb(pids: set[int]) -> float:
    """Their proportional set size: shared pages (the image's libraries, mapped by the kernel
    and a standby alike) split between the processes that map them."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total / 2**20


def fuse_mounts(root: str) -> list[str]:
    """FUSE mount points under `root` (the apptainer double's SIF mounts, with
    APPTAINER_TMPDIR there)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point, kind = fields[4], fields[fields.index("-") + 1]
            if kind.startswith("fuse") and point.startswith(root.rstrip("/") + "/"):
                found.append(point)
    return found


def ours() -> set[int]:
    """This process's live descendants."""
    return descendants(os.getpid(), snapshot())


async def settle(timeout: float = 20.0, interval: float = 0.25) -> None:
    """Wait until this process's descendants are the same processes for three looks in a row
    and use no CPU meanwhile (at most a tick): a kernel that answered is idle, a standby
    started beside it has finished starting."""
    deadline = time.monotonic() + timeout
    last, quiet = None, 0
    while time.monotonic() < deadline:
        procs = snapshot()
        pids = descendants(os.getpid(), procs)
        look = (frozenset(pids), sum(procs[pid].ticks for pid in pids))
        if last is not None and look[0] == last[0] and look[1] - last[1] <= 1:
            quiet += 1
            if quiet == 2:
                return
        else:
            quiet = 0
        last = look
        await asyncio.sleep(interval)


async def wait_gone(timeout: float = 10.0) -> set[int]:
    """Wait for this process's descendants to end; those still there after `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := ours()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


def leftovers(root: str) -> dict[int, str]:
    """Processes of this run still alive: our descendants, any process whose argv names the
    run's folder `root`, any process in a session of ours (container_kernel names a session
    after the pid that owns it). pid -> its command line."""
    me = os.getpid()
    procs = snapshot()
    mine = descendants(me, procs)
    session_prefix = f"{MARKER}={me}-".encode()
    found = {}
    for pid in procs:
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        in_session = any(item.startswith(session_prefix) for item in environ.split(b"\0"))
        if pid in mine or root.encode() in cmdline or in_session:
            found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def kill(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

"""Process care shared by every face: groups, signals, a parent-death signal for launchers.

A runtime parent (Apptainer's starter) may exit while what the kernel or cell started lives on
in its process group. That group is killed after the parent has exited but BEFORE the parent is
reaped: until then its pid, hence the group id, cannot be reused by anyone else.
"""

from __future__ import annotations

import contextlib
import os
import signal


def exited(pid: int) -> bool:
    """True if child `pid` has exited; it is not reaped."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def wait_unreaped(pid: int) -> None:
    """Block until child `pid` exits, leaving it for its Popen to reap."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def kill_group(pgid: int | None) -> None:
    """SIGKILL every process in group `pgid` (never our own group)."""
    if pgid and pgid != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def signal_pids(pids: list[int], signum: int) -> None:
    """Send `signum` to each of `pids` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


_PR_SET_PDEATHSIG = 1
_libc = None


def _load_libc():
    global _libc  # noqa: PLW0603 (loaded once per process)
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (a launcher whose client was SIGKILLed)."""
    _load_libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

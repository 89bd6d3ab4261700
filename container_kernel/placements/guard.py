"""The guard: what a process started in containers ends when that process does, however it ends.

A parent-death signal cannot promise this. Apptainer's starter drops it (its runtime parent and
the kernel live on, owned by init), and where it holds it follows the THREAD that forked, so a
kernel started from a worker thread dies when that thread ends. So each process that starts
containers (a Jupyter Server, a script's KernelManager, the installed spec's launcher, a notebook
kernel running `%%container` cells) has one guard: a small host process in a session of its own
(a signal to the client's group leaves it), reading a pipe whose only writer is the client.

The client tells it what it holds (a session folder, whose mark every process inside carries; a
command to run at the end, such as `scancel`) and when it let go of it. EOF on the pipe means
the client is gone (it returned, raised or was SIGKILLed): the guard ends all it still holds,
within milliseconds. A client that let go of everything closes the pipe and the guard exits with
nothing to do: nothing of ours runs once the kernels are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

END_TIMEOUT = 10.0  # seconds an end command (scancel) may take

# Run on the host as `python -I -c SERVE PACKAGE_PARENT`: the package from where the client has it.
SERVE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "import container_kernel.placements.guard as g; g.serve()"
)


def hold(key: str, *, session: Path | None = None, then: Sequence[str] = ()) -> None:
    """Until `release(key)`: if this process dies, end `session` (its processes, every mark, and
    its folder) and run the command `then`."""
    _guard().send({"hold": key, "session": str(session) if session else None, "then": list(then)})


def release(key: str) -> None:
    """`key` was ended by its owner: nothing to do for it any more."""
    _guard().send({"release": key})


class _Guard:
    """This process's end of its guard."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.writer: int | None = None
        self.held: set[str] = set()

    def send(self, message: dict) -> None:
        with self.lock:
            key = message.get("hold") or message.get("release")
            if "release" in message and key not in self.held:
                return
            if self.writer is None and not self._start():
                return
            line = json.dumps(message).encode() + b"\n"
            try:
                os.write(self.writer, line)  # (one short line: a single atomic write)
            except OSError:  # the guard is gone (killed by hand): start another next time
                self._close()
                return
            if "hold" in message:
                self.held.add(key)
            else:
                self.held.discard(key)
                if not self.held:  # nothing left: the guard reads EOF and exits
                    self._close()

    def _start(self) -> bool:
        reader, writer = os.pipe()  # (neither end is inherited by what we start later)
        package_parent = str(Path(__file__).resolve().parent.parent)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", SERVE, package_parent],
                stdin=reader,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # never a pipe of the client's: it would stay open
                start_new_session=True,
            )
        except OSError:  # no usable sys.executable (an embedded interpreter): the sweep remains
            os.close(writer)
            return False
        finally:
            os.close(reader)
        threading.Thread(target=process.wait, daemon=True).start()  # reaped when it exits
        self.writer = writer
        return True

    def _close(self) -> None:
        if self.writer is not None:
            os.close(self.writer)
        self.writer = None
        self.held.clear()


_current: _Guard | None = None
_current_lock = threading.Lock()


def _guard() -> _Guard:
    """This process's guard (a forked child gets its own: the parent's pipe is not its own)."""
    global _current  # noqa: PLW0603 (one per process)
    with _current_lock:
        if _current is None or _current.owner != os.getpid():
            _current = _Guard()
        return _current


def serve() -> None:
    """The guard's side: read what the client holds until EOF, then end what is still held."""
    import signal

    for signum in (signal.SIGINT, signal.SIGHUP):  # a terminal's ^C or hang-up is the client's
        signal.signal(signum, signal.SIG_IGN)
    held: dict[str, dict] = {}
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "release" in message:
            held.pop(message["release"], None)
        else:
            held[message["hold"]] = message
    for entry in held.values():
        end(entry.get("session"), entry.get("then") or ())


def end(session: str | None, then: Sequence[str]) -> None:
    """End a session's processes and folder, then run `then`."""
    from ..launch.sessions import Session

    if session:
        Session(Path(session)).end()
    if then:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(then, capture_output=True, check=False, timeout=END_TIMEOUT)

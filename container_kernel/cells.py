"""One `%%container` cell's run: its session, its process, stopping it on an interrupt.

magics.py parses options and moves values; this module runs the command (streams.py reads its
output and defers interrupts) and knows nothing of IPython. Each cell gets a `Session` of its
own (a private folder no other container sees, and a mark on every process it starts), ended
with the cell whatever happens, and by the guard (guard.py) if the notebook's kernel dies first
(killed, force-restarted, crashed).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import guard, processes, sessions, streams
from .launch import CELL_FILES, Launch, private_mount
from .sessions import Session
from .settings import ContainerSettings
from .slurm import SlurmCell

STDERR_TAIL = 10  # lines of stderr kept for an error message
INTERRUPT_GRACE = 2.0  # seconds between SIGINT and SIGTERM, and between SIGTERM and SIGKILL

# Runs inside the container (any Python 3.6+), as `python3 run.py FOLDER`: FOLDER comes as an
# argument, so a runtime that relocates the folder rewrites it. It loads the -i values, runs the
# cell as __main__ from the notebook's folder, and pickles the -o values back.
RUNNER = """\
def _container_kernel_run():
    import os, sys  # (pickle and traceback only when needed: a cell's start is paid each time)
    folder, outputs = sys.argv[1], sys.argv[2:]
    path = os.path.join(folder, "cell.py")
    sys.argv, sys.path[0] = [path], os.getcwd()
    ns = sys.modules["__main__"].__dict__  # classes the cell defines pickle as __main__.X
    del ns["_container_kernel_run"]
    ns["__file__"] = path
    inputs = os.path.join(folder, "in.pickle")
    if os.path.exists(inputs):
        import pickle
        with open(inputs, "rb") as f:
            for name, data in pickle.load(f).items():
                try:
                    ns[name] = pickle.loads(data)
                except Exception as err:
                    sys.exit("container-kernel: -i %s: cannot load it in the container (%s: %s); "
                             "its class must come from a module both sides import, e.g. a .py "
                             "next to the notebook." % (name, type(err).__name__, err))
    with open(path) as f:
        code = compile(f.read(), path, "exec")
    try:
        exec(code, ns)
    except SystemExit as done:
        if done.code not in (None, 0):
            raise
    except BaseException as err:
        import traceback
        traceback.print_exception(type(err), err, err.__traceback__.tb_next)
        sys.exit(1)
    if not outputs:
        return
    import pickle
    values, failed = {}, []
    for name in outputs:
        try:
            values[name] = pickle.dumps(ns[name], protocol=4)
        except KeyError:
            failed.append("-o %s: not defined in the cell" % name)
        except Exception as err:
            failed.append("-o %s: %s: %s" % (name, type(err).__name__, err))
    if failed:
        sys.exit("container-kernel: cannot bring back " + "; ".join(failed))
    with open(os.path.join(folder, "out.pickle"), "wb") as f:
        pickle.dump(values, f, protocol=4)


_container_kernel_run()
"""


@contextlib.contextmanager
def cell_session() -> Iterator[Session]:
    """A new session for one cell, ended when the cell is, or by the guard if the notebook's
    kernel dies first (guard.py). Sessions whose owner died unguarded are ended first."""
    sessions.sweep()
    session = Session.create()
    guard.hold(session.name, session=session.folder)
    try:
        yield session
    finally:
        session.end()
        guard.release(session.name)


def files_folder(settings: ContainerSettings, session: Session) -> tuple[Path, str]:
    """A folder for the cell's files (cell.py, the pickled values): on the host, and inside.
    Hidden in the session's private folder (the cell's /tmp), so the cell's own files cannot
    clash with them; referenced by their inside path, which a runtime that relocates it
    rewrites."""
    private = private_mount(settings, session)
    host = Path(private.src, CELL_FILES)
    host.mkdir(mode=0o700)
    return host, f"{private.dst}/{CELL_FILES}"


@dataclass(frozen=True)
class Result:
    returncode: int
    stopped: str | None  # after an interrupt: "interrupted", "terminated" or "killed"
    tail: list[str]  # stderr's last lines, as a terminal shows them


def run(
    launch: Launch,
    session: Session,
    write: Callable[[str, str], None],
    remote: SlurmCell | None = None,
) -> Result:
    """Run `launch` in `session`, handing its output to `write(stream name, text)` piece by
    piece as it comes (a progress bar's `\\r` updates too), in the calling thread, where
    ipykernel expects a cell's output. An interrupt stops the process and all it started.
    `remote`: the cell is a Slurm job (launch is srun's), which takes signals as messages."""
    tail = streams.Tail(STDERR_TAIL)

    def sink(name: str, text: str) -> None:
        if name == "stderr":
            tail.add(text)
        write(name, text)

    stopped = None
    with streams.deferred_interrupts() as interrupts:
        proc = subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            stdin=subprocess.PIPE if remote else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: what the cell starts is killed with it
        )
        if remote:
            remote.start(proc)
        kill = partial(remote.send, proc.pid, signal.SIGKILL) if remote else None
        events = interrupts.events
        reaper = threading.Thread(target=_end_group, args=(proc, session, events), daemon=True)
        reaper.start()
        readers = [
            threading.Thread(target=streams.read, args=(pipe, name, events), daemon=True)
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for reader in readers:
            reader.start()
        try:
            for name, text in streams.output(events, len(readers) + 1):
                sink(name, text)
        except KeyboardInterrupt:
            send = (
                partial(remote.send, proc.pid)
                if remote
                else partial(_send, proc.pid, session, forwards=launch.runtime.forwards_signals)
            )
            stopped = _stop(proc, reaper, interrupts, send, kill)
        finally:
            if reaper.is_alive():  # an error while streaming: nothing may outlive the cell
                (kill or partial(processes.kill_group, proc.pid))()
            reaper.join()
            proc.wait()  # only now: the group was killed while its id was still ours
        if stopped:  # the process's last words: the writers are dead, the pipes end soon
            for reader in readers:
                reader.join(1.0)
            for name, text in streams.drain(events):
                sink(name, text)
    return Result(proc.returncode, stopped, tail.lines())


def _end_group(proc: subprocess.Popen, session: Session, events: queue.SimpleQueue) -> None:
    """Wait for the runtime parent to exit, then kill what it left in its group and in its
    session (setsid'd daemons, which would hold the pipes open), leaving the parent unreaped
    (its pid, the group id, stays ours) for the main thread's proc.wait()."""
    processes.wait_unreaped(proc.pid)
    processes.kill_group(proc.pid)
    session.kill_processes()
    events.put(("exit", None))


def _stop(
    proc: subprocess.Popen,
    reaper: threading.Thread,
    interrupts: streams.Interrupts,
    send: Callable[[int], None],
    kill: Callable[[], None] | None,
) -> str:
    """SIGINT, then SIGTERM (both as `_send` says), then SIGKILL to the whole group; another
    interrupt meanwhile goes straight to SIGKILL. Done when the reaper is: the process has
    exited, its group is gone."""
    seen = interrupts.count
    for signum, how in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
        send(signum)
        deadline = time.monotonic() + INTERRUPT_GRACE
        while reaper.is_alive() and time.monotonic() < deadline and interrupts.count == seen:
            reaper.join(0.05)
        if not reaper.is_alive():
            return how
        if interrupts.count != seen:
            break
    if kill:  # srun alone: its group's death would leave the job running
        kill()
    else:
        processes.kill_group(proc.pid)  # not reaped yet: the group id is still ours
    return "killed"


def _send(pgid: int, session: Session, signum: int, *, forwards: bool) -> None:
    """A runtime that execs the command (ch-run) has no one to forward: its group gets the
    signal. A runtime parent that forwards signals (Apptainer) passes them to the command alone
    and must not get them twice: SIGINT goes to what runs inside the group (the command and its
    children, `os.system("sleep 30")` too), SIGTERM to the parent alone."""
    with contextlib.suppress(ProcessLookupError):
        if not forwards:
            os.killpg(pgid, signum)
        elif signum == signal.SIGINT and (inside := session.inside_processes(pgid)):
            processes.signal_pids(inside, signum)
        else:  # SIGTERM, or nothing started inside yet
            os.kill(pgid, signum)


def pull_progress() -> Callable[[str], None]:
    """A registry image's first pull, shown in the cell's output as one line that updates (in
    a terminal, one line each)."""
    from IPython.display import display

    handle = None

    def show(line: str) -> None:
        nonlocal handle
        data = {"text/plain": f"%container: {line}"}
        if handle is None:
            handle = display(data, raw=True, display_id=True)
        else:
            handle.update(data, raw=True)

    return show

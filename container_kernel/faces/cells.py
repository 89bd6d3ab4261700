"""One `%%container` cell's run: its process, its output, stopping it on an interrupt.

magics.py parses options and moves values; this module runs the command its placement prepared
(streams.py reads its output and defers interrupts) and knows nothing of IPython. The placement
gives each cell a session of its own (a private folder no other container sees, and a mark on
every process it starts), ended with the cell whatever happens, and by the guard if the
notebook's kernel dies first (killed, force-restarted, crashed).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ..launch.plan import Launch
from ..placements.base import Placement
from . import streams

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


@dataclass(frozen=True)
class Result:
    returncode: int
    stopped: str | None  # after an interrupt: "interrupted", "terminated" or "killed"
    tail: list[str]  # stderr's last lines, as a terminal shows them


def run(placement: Placement, launch: Launch, write: Callable[[str, str], None]) -> Result:
    """Run `launch` (prepared by `placement`), handing its output to `write(stream name,
    text)` piece by piece as it comes (a progress bar's `\\r` updates too), in the calling
    thread, where ipykernel expects a cell's output. An interrupt stops the process and all it
    started."""
    tail = streams.Tail(STDERR_TAIL)

    def sink(name: str, text: str) -> None:
        if name == "stderr":
            tail.add(text)
        write(name, text)

    stopped = None
    with streams.deferred_interrupts() as interrupts:
        proc = placement.start(
            launch, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        events = interrupts.events
        reaper = threading.Thread(target=_reap, args=(placement, proc, events), daemon=True)
        reaper.start()
        readers = [
            threading.Thread(target=streams.read, args=(pipe, name, events), daemon=True)
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for reader in readers:
            reader.start()
        send = partial(placement.signal, proc)
        try:
            for name, text in streams.output(events, len(readers) + 1):
                sink(name, text)
        except KeyboardInterrupt:
            stopped = _stop(reaper, interrupts, send)
        finally:
            if reaper.is_alive():  # an error while streaming: nothing may outlive the cell
                send(signal.SIGKILL)
            reaper.join()
            proc.wait()  # only now: the group was killed while its id was still ours
        if stopped:  # the process's last words: the writers are dead, the pipes end soon
            for reader in readers:
                reader.join(1.0)
            for name, text in streams.drain(events):
                sink(name, text)
    return Result(proc.returncode, stopped, tail.lines())


def _reap(placement: Placement, proc: subprocess.Popen, events) -> None:
    """Once the runtime parent has exited, what it left is killed (setsid'd daemons, which
    would hold the pipes open); the parent stays unreaped (its pid, the group id, stays ours)
    for the main thread's proc.wait()."""
    placement.wait_exited(proc)
    events.put(("exit", None))


def _stop(
    reaper: threading.Thread, interrupts: streams.Interrupts, send: Callable[[int], None]
) -> str:
    """SIGINT, then SIGTERM, then SIGKILL (each as the placement routes it); another interrupt
    meanwhile goes straight to SIGKILL. Done when the reaper is: the process has exited, what
    it left is gone."""
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
    send(signal.SIGKILL)
    return "killed"


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

"""A cell's output and interrupts, as one queue of events read in the main thread.

Each pipe is read in pieces as they come (a `\\r` progress bar has no lines), decoded as UTF-8
across pieces; SIGINT is deferred into the same queue, so that output is written, and an
interrupt raised, only between pieces (an OutStream interrupted mid-flush can lose the next
cell's output). Knows nothing of containers.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import select
import signal
import threading
import time
from collections import deque

CHUNK = 65536
HOLD = 0.03  # seconds a partial line may wait for its end
LINE_MAX = 500  # characters kept of each line of a tail


class Interrupts:
    """SIGINT while a container runs (Ctrl-C, a kernel interrupt): queued as an event that
    `output` turns into KeyboardInterrupt, and counted, so that a stop in progress can escalate
    on another one. SimpleQueue.put is safe in a signal handler."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.count = 0

    def __call__(self, *_) -> None:
        self.count += 1
        self.events.put(("interrupt", None))


@contextlib.contextmanager
def deferred_interrupts():
    """Install an `Interrupts` as the SIGINT handler (Python delivers SIGINT to the main thread
    only: in an ipykernel subshell the cell cannot be interrupted)."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)


def output(events: queue.SimpleQueue, ends: int):
    """(stream name, text) as it comes, until `ends` end marks (`(name, None)`: a pipe closed,
    a process exited) have come; KeyboardInterrupt when an interrupt arrives."""
    while ends:
        name, text = events.get()
        if name == "interrupt":
            raise KeyboardInterrupt
        if text is None:
            ends -= 1
        else:
            yield name, text


def read(pipe, name: str, events: queue.SimpleQueue) -> None:
    """One pipe, whatever has arrived (not line by line: a `\\r` progress bar has no lines),
    decoded as UTF-8 across pieces; stops on empty bytes, then flushes the decoder."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with pipe:
        fd, ended = pipe.fileno(), False
        poller = select.poll()  # (select.select fails on a descriptor above 1023)
        poller.register(fd, select.POLLIN)
        while not ended:
            data = os.read(fd, CHUNK)
            ended = not data
            # An unbuffered print is several writes: wait a moment for the line's end, so that
            # a line goes out in one piece, and a partial line (a progress bar) HOLD late.
            deadline = time.monotonic() + HOLD
            while data and not data.endswith(b"\n") and len(data) < CHUNK:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    break
                more = os.read(fd, CHUNK - len(data))
                if not more:
                    ended = True
                    break
                data += more
            if text := decoder.decode(data):
                events.put((name, text))
        if rest := decoder.decode(b"", final=True):
            events.put((name, rest))
    events.put((name, None))


def drain(events: queue.SimpleQueue) -> list[tuple[str, str]]:
    """The output still queued, without interrupts and end marks."""
    drained = []
    while not events.empty():
        name, text = events.get()
        if name != "interrupt" and text is not None:
            drained.append((name, text))
    return drained


class Tail:
    """The last lines of a stream that comes in pieces, each as a terminal shows it: the text
    after its last `\\r` (a progress bar's final state, not its first 500 characters)."""

    def __init__(self, keep: int) -> None:
        self._lines: deque[str] = deque(maxlen=keep)
        self._partial = ""

    def add(self, text: str) -> None:
        *complete, partial = (self._partial + text).split("\n")
        for line in complete:
            self._lines.append(_shown(line) + "\n")
        # The last segment only (keeping a trailing `\r`, maybe half of a `\r\n`), bounded.
        start = partial.rfind("\r", 0, len(partial) - 1) + 1
        self._partial = partial[start : start + 2 * LINE_MAX]

    def lines(self) -> list[str]:
        last = [_shown(self._partial)] if self._partial.strip() else []
        return [*self._lines, *last][-(self._lines.maxlen or 0) :]


def _shown(line: str) -> str:
    body = line.rstrip("\r")
    return body[body.rfind("\r") + 1 :][:LINE_MAX]

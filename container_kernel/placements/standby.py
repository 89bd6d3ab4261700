"""Standby: a kernel's next container, started ahead of its restart.

Most of a (re)start is Python importing ipykernel inside the container. Once a kernel runs, a
second container is started with the same launch (image, binds, environment, home, private
/tmp) under a mark of its own (sessions.py), whose Python imports ipykernel in a thread at the
lowest CPU priority (nice is per thread on Linux: the kernel it becomes runs at normal priority)
and waits on a FIFO in a folder bound into it alone (not in the /tmp it shares with the kernel:
nothing the kernel runs sees it). A restart writes the kernel's module and arguments into the
FIFO: the standby runs them as `python -m` would. It is told nothing before: no
connection file name, no key, and it runs no user code until then.

A standby is used only if the restart's launch is the one it was made for (same argv and
environment, so same settings and image path) and the image and kernel spec files are unchanged;
otherwise it is discarded and the restart starts cold.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..images.kernel_command import KernelCommand
from ..launch.plan import Launch, plan
from ..runtimes.base import Bind

STANDBY_MOUNT = "/mnt/container-kernel-standby"  # the standby's own folder, inside
FIFO = "start"
DISCARD_GRACE = 1.0  # seconds a discarded standby has to exit by itself
# Run inside by the image's Python (any 3.x): argv = [-c, fifo, sys.path addition or "", module].
BOOT = r"""
import json, os, runpy, sys, threading
fifo, extra, module = sys.argv[1:4]
IMPORTED = "imported"
if sys.path and sys.path[0] == "":
    sys.path[0] = os.getcwd()  # as `python -m` has it
if extra:
    sys.path.append(extra)
def warm():
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # this thread only
        __import__(module)
        import ipykernel.kernelapp, ipykernel.ipkernel
    except Exception:
        pass
    seen = {}
    for m in list(sys.modules.values()):
        try:
            path = os.path.realpath(m.__file__)  # (the host finds it without our symlinks)
            info = os.stat(path)
            seen[path] = [info.st_mtime_ns, info.st_size]
        except (AttributeError, OSError, TypeError):
            pass
    record = os.path.join(os.path.dirname(fifo), IMPORTED)
    with open(record + ".partial", "w") as handle:
        json.dump(seen, handle)
    os.rename(record + ".partial", record)
warming = threading.Thread(target=warm, daemon=True)
warming.start()
with open(fifo) as handle:
    start = handle.read()
if not start:
    sys.exit(0)
try:
    os.unlink(fifo)
except OSError:
    pass  # (the host removed its folder once it handed the start over)
warming.join()
sys.argv = [sys.argv[0]] + json.loads(start)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
IMPORTED = "imported"  # what BOOT writes once warm: each module file it loaded, as it saw it


def standby_command(kernel: KernelCommand, fifo: str) -> list[str]:
    """The standby's argv: the kernel's Python, told only where its FIFO is."""
    return [*kernel.interpreter, "-c", BOOT, fifo, kernel.extra_path, kernel.module]


@dataclass
class Standby:
    """One pre-started container, for the launch it was made for."""

    process: subprocess.Popen
    fifo: Path  # on the host, in a folder of its own
    variant: str  # its session mark's
    kernel_launch: tuple  # the kernel launch it stands in for (`comparable`)
    kernel: KernelCommand
    identity: tuple  # of the image and kernel spec files, when it started

    def fits(self, launch: tuple, command: KernelCommand | None, identity: tuple) -> bool:
        """Whether a restart with `launch` (`comparable`) may take this standby."""
        return (
            self.process.poll() is None
            and command is not None
            and (command.interpreter, command.extra_path, command.module)
            == (self.kernel.interpreter, self.kernel.extra_path, self.kernel.module)
            and launch == self.kernel_launch
            and identity == self.identity
        )

    def imported_changed(self, image: str) -> bool:
        """Whether a module file it imported is no longer what it read, in a sandbox image
        (updated in place: the folder's own identity does not show it, and Apptainer's overlay
        may even show the standby the old file: only a new container sees the new one). The
        modification time and size it saw inside against the image's file now (not the change
        time: a hard link to the file, as `cp -al` makes, changes that too). True while it is
        still importing: what it has may be stale already."""
        if not os.path.isdir(image):
            return False  # a SIF or SquashFS file: file_identity covers it
        try:
            seen = dict(json.loads((self.fifo.parent / IMPORTED).read_text()))
        except (OSError, ValueError, TypeError):
            return True
        for inside, before in seen.items():
            try:
                info = os.stat(os.path.join(image, str(inside).lstrip("/")))
            except OSError:
                continue  # not the image's (a bind's: the injected ipykernel, the home)
            if [info.st_mtime_ns, info.st_size] != before:
                return True
        return False

    def hand_over_nothing(self) -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))

    def hand_over(self, arguments: list[str]) -> bool:
        """Tell it the kernel's arguments; False if it is not there to read them."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # no reader: ENXIO at once
        except OSError:
            return False
        try:
            os.set_blocking(fd, True)
            os.write(fd, json.dumps(arguments).encode())
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def discard(self, grace: float = DISCARD_GRACE) -> None:
        """Stop it: an empty start (EOF on its FIFO) lets it exit by itself within `grace`
        seconds, so its runtime tears down as usual; else it is killed (and what it left is,
        by its mark, by the caller). A shutdown gives no grace: it never waits for a standby
        (one still importing has not opened its FIFO yet)."""
        self.hand_over_nothing()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe:
                with contextlib.suppress(OSError):
                    pipe.close()
        shutil.rmtree(self.fifo.parent, ignore_errors=True)


def comparable(launch: Launch, mark: str) -> tuple:
    """A launch as a standby compares it: the session's mark (which changes when a standby
    takes over) left out."""
    return (
        [arg.replace(mark, "") for arg in launch.argv],
        {name: value.replace(mark, "") for name, value in launch.env.items()},
        launch.cwd,
    )


def start(container, command: list[str], kernel_launch: Launch, inputs: dict, identity: tuple):
    """A standby for `container` (a Here placement) whose kernel was just started with
    `command` and `kernel_launch` (planned from `inputs`); None for a kernel it cannot stand in
    for (not `python -m MODULE`)."""
    parsed = KernelCommand.parse(command)
    if parsed is None:
        return None
    variant = secrets.token_hex(4)
    folder = container.session.folder / f"standby-{variant}"
    folder.mkdir(mode=0o700)
    fifo = folder / FIFO
    os.mkfifo(fifo, 0o600)
    session = container.session.with_variant(variant)
    own = Bind(str(folder), STANDBY_MOUNT, staging="standby")
    launch = plan(
        container.settings, standby_command(parsed, f"{STANDBY_MOUNT}/{FIFO}"), session=session,
        **{**inputs, "extra_binds": [*inputs.get("extra_binds", ()), own]},
    )  # fmt: skip
    try:
        process = container.start(launch, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    before = comparable(kernel_launch, container.session.mark)
    return Standby(process, fifo, variant, before, parsed, identity)

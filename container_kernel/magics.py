"""`%%container` and `%container`: run a cell or a command line in an image, from any IPython.

The magics are a third face on the shared settings: `ContainerMagics` *is* a `ContainerSettings`,
so `%config ContainerMagics.binds = [...]` and a config file's `c.ContainerSettings.binds` both
reach it, and every command goes through `launch.plan`, like the provisioner's.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import pickle
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from traitlets import TraitError

from . import homes
from .errors import ContainerKernelError, runtime_message
from .kernelspec import default_kernel_name
from .launch import plan
from .runtimes import Bind
from .settings import ContainerSettings, add_settings_arguments, settings_from_arguments

PYTHON = re.compile(r"python[0-9.]*")
STDERR_TAIL = 10
INTERRUPT_GRACE = 2.0  # seconds between SIGINT and SIGTERM, and between SIGTERM and SIGKILL

# Runs inside the container (any Python 3.6+), as `python3 run.py FOLDER`: FOLDER comes as an
# argument, so a runtime that relocates the folder rewrites it. It loads the -i values, runs the
# cell as __main__ from the notebook's folder, and pickles the -o values back.
RUNNER = """\
def _container_kernel_run():
    import os, pickle, sys, traceback
    folder, outputs = sys.argv[1], sys.argv[2:]
    path = os.path.join(folder, "cell.py")
    sys.argv, sys.path[0] = [path], os.getcwd()
    sys.stdout.reconfigure(line_buffering=True)
    ns = sys.modules["__main__"].__dict__  # classes the cell defines pickle as __main__.X
    del ns["_container_kernel_run"]
    ns["__file__"] = path
    with open(os.path.join(folder, "in.pickle"), "rb") as f:
        for name, data in pickle.load(f).items():
            try:
                ns[name] = pickle.loads(data)
            except Exception as err:
                sys.exit("container-kernel: -i %s: cannot load it in the container (%s: %s); its "
                         "class must come from a module both sides import, e.g. a .py next to "
                         "the notebook." % (name, type(err).__name__, err))
    with open(path) as f:
        code = compile(f.read(), path, "exec")
    try:
        exec(code, ns)
    except SystemExit:
        raise
    except BaseException as err:
        traceback.print_exception(type(err), err, err.__traceback__.tb_next)
        sys.exit(1)
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


class ContainerCellError(subprocess.CalledProcessError):
    """The command in the container exited non-zero; shown as one short message, no traceback."""

    def __init__(self, returncode: int, cmd: list[str], what: str, tail: list[str]):
        super().__init__(returncode, cmd, stderr="".join(tail))
        lines = [runtime_message([line]) for line in tail if line.strip()]
        self.message = f"{what} exited with status {returncode}" + (
            ". Last lines of stderr:\n" + "\n".join(lines) if lines else "."
        )

    def __str__(self) -> str:
        return self.message

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self.message}"]


def container_arguments(name: str):
    """The options of both magics: the shared settings' flags, then the magic's own."""
    return lambda func: _with_arguments(func, name)


def _with_arguments(func, name: str):
    decorators = []
    add_settings_arguments(lambda *a, **k: decorators.append(magic_arguments.argument(*a, **k)))
    own = [
        (("-i", "--input"), {"action": "append", "default": [], "metavar": "NAME",
                             "help": "Notebook variable to make available in a Python cell."}),
        (("-o", "--output"), {"action": "append", "default": [], "metavar": "NAME",
                              "help": "Cell variable to bring back into the notebook."}),
        (("--out",), {"metavar": "VAR", "help": "Store stdout in VAR instead of printing it."}),
        (("--err",), {"metavar": "VAR", "help": "Store stderr in VAR instead of printing it."}),
        (("--no-raise-error",), {"action": "store_false", "dest": "raise_error",
                                 "help": "On a non-zero exit or an interrupt, do not raise."}),
        (("image",), {"nargs": "?", "help": "The image (default: the configured `image`)."}),
        (("command",), {"nargs": argparse.REMAINDER,
                        "help": "The command inside (default for a cell: python3)."}),
    ]  # fmt: skip
    decorators += [magic_arguments.argument(*flags, **kw) for flags, kw in own]
    for decorator in reversed(decorators):
        func = decorator(func)
    return magic_arguments.magic_arguments(name)(func)


@magics_class
class ContainerMagics(ContainerSettings, Magics):
    """Run cells and command lines in a container image, with the provisioner's settings."""

    @container_arguments("%container")  # shown as %%container
    @cell_magic("container")
    def container_cell(self, line: str, cell: str):
        """Run the cell in IMAGE with COMMAND (default python3) as its interpreter.

        IMAGE may be left out when `%config ContainerMagics.image` (or $CONTAINER_KERNEL_IMAGE)
        names one; the first word is then taken as IMAGE only if it looks like one (has a '/',
        '://', a .sif/.img suffix, or is a folder here). The cell goes in as a file, its path the
        last argument of COMMAND (`bash`, `Rscript`, `perl`... all read a script that way); a
        Python cell runs as __main__ from the notebook's folder and may use -i/-o. Options add
        to the configured binds/env/pass_env and override the other settings, for this cell only.
        """
        self._run(line, cell)

    @container_arguments("container")
    @line_magic("container")
    def container_line(self, line: str):
        """Run one command line in IMAGE, e.g. `%container cat /etc/os-release`."""
        self._run(line, None)

    def _run(self, line: str, cell: str | None) -> None:
        magic = self.container_cell if cell is not None else self.container_line
        args = magic.parser.parse_args(shlex.split(line))
        try:
            settings = self._cell_settings(args)
            command = args.command or (["python3"] if cell is not None else [])
            if not command:
                msg = "%container needs a COMMAND, e.g. `%container IMAGE cat /etc/os-release`."
                raise UsageError(msg)
            with tempfile.TemporaryDirectory(prefix="container-magic-") as folder:
                inside = self._prepare(args, cell, command, Path(folder))
                home = self._home(settings)
                try:
                    launch = plan(
                        settings,
                        inside,
                        cwd=os.getcwd(),
                        home=home,
                        host_env=os.environ,
                        extra_binds=[Bind(folder, folder, staging="magic")],
                    )
                    self._execute(launch, args, f"{command[0]} in {settings.image}", Path(folder))
                finally:
                    if settings.home == "temporary" and home is not None:
                        homes.remove_home(home)
        except (ContainerKernelError, TraitError) as err:
            raise UsageError(str(err)) from None

    def _cell_settings(self, args: argparse.Namespace) -> ContainerSettings:
        """This cell's settings: the configured ones, with the cell's options on top (list and
        dict options add to the configured ones). The magic's own traits are left alone."""
        values = {name: getattr(self, name) for name in ContainerSettings.class_traits(config=True)}
        given = settings_from_arguments(args)
        for name in ("binds", "pass_env", "runtime_args"):
            given[name] = [*values[name], *given.get(name, [])]
        given["env"] = {**values["env"], **given.get("env", {})}
        if args.image and values["image"] and not _looks_like_image(args.image):
            args.command = [args.image, *args.command]  # `%%container bash`: bash is the command
            args.image = None
        given["image"] = args.image or values["image"]
        if not given["image"]:
            msg = "No image: name one (`%%container IMAGE`) or set `%config ContainerMagics.image`."
            raise UsageError(msg)
        return ContainerSettings(**{**values, **given})

    def _home(self, settings: ContainerSettings) -> Path | None:
        """The fake home: one per image (`magic-<name>`), or a fresh one for this cell."""
        if settings.home == "temporary":
            return homes.temporary_home()
        name = f"magic-{default_kernel_name(settings.image)}"
        return homes.resolve_home(settings.home, settings.home_root, name)

    def _prepare(self, args, cell: str | None, command: list[str], folder: Path) -> list[str]:
        """The command inside, the cell's files written to the private `folder`. Their paths go
        in as arguments: a runtime that relocates the folder rewrites them there only."""
        is_python = bool(PYTHON.fullmatch(os.path.basename(command[0])))
        if (args.input or args.output) and (cell is None or not is_python):
            msg = "-i/-o work only in a %%container cell run by a Python interpreter."
            raise UsageError(msg)
        if cell is None:
            return command
        if not is_python:
            (folder / "cell").write_text(cell)
            return [*command, str(folder / "cell")]
        inputs = {}
        for name in args.input:
            if name not in self.shell.user_ns:
                raise UsageError(f"-i {name}: no such variable in the notebook.")
            try:
                inputs[name] = pickle.dumps(self.shell.user_ns[name], protocol=4)
            except Exception as err:  # pickling raises many types; each means "cannot send"
                msg = f"-i {name}: cannot send it into the container ({type(err).__name__}: {err})."
                raise UsageError(msg) from None
        (folder / "in.pickle").write_bytes(pickle.dumps(inputs, protocol=4))
        (folder / "cell.py").write_text(cell)
        (folder / "run.py").write_text(RUNNER)
        return [*command, str(folder / "run.py"), str(folder), *args.output]

    def _execute(self, launch, args: argparse.Namespace, what: str, folder: Path) -> None:
        """Run, stream both outputs live, stop everything on interrupt, raise on failure."""
        proc = subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: what the cell starts is killed with it
        )
        captured: dict[str, list[str]] = {"stdout": [], "stderr": []}
        tail: deque[str] = deque(maxlen=STDERR_TAIL)
        try:
            for name, text in _lines(proc):
                if name == "stderr":
                    tail.append(text)
                if args.out if name == "stdout" else args.err:
                    captured[name].append(text)
                else:
                    stream = sys.stdout if name == "stdout" else sys.stderr
                    stream.write(text)
                    stream.flush()
            proc.wait()
        except KeyboardInterrupt:
            how = _stop(proc)
            if args.raise_error:
                raise KeyboardInterrupt(f"the container process was {how}") from None
            print(f"The container process was {how}.")
            return
        finally:
            if proc.returncode is None:  # not reaped yet: its group id is still ours
                _kill_group(proc)
            for name, var in (("stdout", args.out), ("stderr", args.err)):
                if var:
                    self.shell.user_ns[var] = "".join(captured[name])
        if proc.returncode != 0 and args.raise_error:
            raise ContainerCellError(proc.returncode, launch.argv, what, list(tail))
        if proc.returncode == 0 and args.output:
            self._bring_back(folder / "out.pickle")

    def _bring_back(self, path: Path) -> None:
        for name, data in pickle.loads(path.read_bytes()).items():
            try:
                self.shell.user_ns[name] = pickle.loads(data)
            except Exception as err:  # unpickling raises many types; each means "cannot load"
                msg = (
                    f"-o {name}: cannot load it in the notebook ({type(err).__name__}: {err}); "
                    "its class must come from a module both sides import."
                )
                raise UsageError(msg) from None


def _looks_like_image(word: str) -> bool:
    return "/" in word or word.endswith((".sif", ".simg", ".img", ".sqfs")) or os.path.isdir(word)


def _lines(proc: subprocess.Popen):
    """(stream name, line) pairs from both pipes as they come, yielded in the main thread, where
    ipykernel expects the cell's output.

    An interrupt (Ctrl-C, a kernel interrupt) is turned into KeyboardInterrupt here, between
    lines, never in the middle of writing one: an OutStream interrupted mid-flush can lose the
    next cell's output.
    """
    lines: queue.Queue = queue.Queue()
    threads = [
        threading.Thread(target=_read, args=(proc.stdout, "stdout", lines), daemon=True),
        threading.Thread(target=_read, args=(proc.stderr, "stderr", lines), daemon=True),
        # Background processes the cell left would hold the pipes open: they end with it.
        threading.Thread(target=_reap, args=(proc,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    in_main_thread = threading.current_thread() is threading.main_thread()  # (not a subshell)
    if in_main_thread:
        previous = signal.signal(signal.SIGINT, lambda *_: lines.put(("interrupt", None)))
    try:
        open_pipes = 2
        while open_pipes:
            name, text = lines.get()
            if name == "interrupt":
                raise KeyboardInterrupt
            if text is None:
                open_pipes -= 1
            else:
                yield name, text
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def _read(pipe, name: str, lines: queue.Queue) -> None:
    """One pipe, line by line, as UTF-8; stops on empty bytes, then flushes the decoder."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with pipe:
        for raw in iter(pipe.readline, b""):
            lines.put((name, decoder.decode(raw)))
        if rest := decoder.decode(b"", final=True):
            lines.put((name, rest))
    lines.put((name, None))


def _stop(proc: subprocess.Popen) -> str:
    """SIGINT to the runtime parent only (it forwards it once; the group would get it twice),
    then SIGTERM, then SIGKILL to the whole group."""
    for signum, how in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(INTERRUPT_GRACE)
            return how
    _kill_group(proc)
    proc.wait()
    return "killed"  # (SIGKILL to the group before the wait: the group id was still ours)


def _reap(proc: subprocess.Popen) -> None:
    """Wait for the runtime parent; kill what it left in its group before reaping it (after,
    the group id could be reused by someone else)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    _kill_group(proc)
    proc.wait()


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

"""`%%container` and `%container`: run a cell or a command line in an image, from any IPython.

The magics are a third face on the shared settings: `ContainerMagics` *is* a `ContainerSettings`,
so `%config ContainerMagics.binds = [...]` and a config file's `c.ContainerSettings.binds` both
reach it, and every command goes through its placement, like the provisioner's kernels. This
module parses options and moves values; cells.py runs the command (output, interrupts).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import shlex
import subprocess
import sys

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from traitlets import TraitError
from traitlets.config import Config

from ..ground.errors import ContainerKernelError, runtime_message
from ..launch.plan import cell_files_inside
from ..placements import placement_for
from ..placements.base import Placement
from ..settings import ContainerSettings
from . import cells
from .cli_arguments import add_settings_arguments, settings_from_arguments
from .kernelspecs import IMAGE_SUFFIXES, default_kernel_name

PYTHON = re.compile(r"python[0-9.]*")


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
        try:
            words = shlex.split(line)
        except ValueError as err:  # an unbalanced quote
            raise UsageError(f"%container: {err} in {line!r}") from None
        args = magic.parser.parse_args(words)
        try:
            settings = self._cell_settings(args)
            command = args.command or (["python3"] if cell is not None else [])
            if not command:
                msg = "%container needs a COMMAND, e.g. `%container IMAGE cat /etc/os-release`."
                raise UsageError(msg)
            if command[0].startswith("-"):
                msg = f"Options go before IMAGE and COMMAND; {command[0]!r} came after them."
                raise UsageError(msg)
            placement = placement_for(
                settings, self._home_name(settings), progress=cells.pull_progress()
            )
            if args.output and not placement.brings_files_back:
                msg = (
                    f"-o needs the cell's folder back: not with placement={settings.placement} "
                    "(print instead)."
                )
                raise UsageError(msg)
            what = f"{command[0]} in {settings.image}"
            argv, files = self._prepare(args, cell, command, cell_files_inside(settings))
            try:  # (a session of its own: never the host's /tmp)
                launch = placement.prepare(
                    argv, connection_file=None, cwd=os.getcwd(), host_env=os.environ,
                    files=files,
                )  # fmt: skip
                self._execute(placement, launch, args, what)
            finally:
                placement.end()
        except (ContainerKernelError, TraitError) as err:
            raise UsageError(str(err)) from None

    def _cell_settings(self, args: argparse.Namespace) -> ContainerSettings:
        """This cell's settings: the configured ones, with the cell's options on top (list and
        dict options add to the configured ones). The magic's own traits are left alone."""
        values = {name: getattr(self, name) for name in ContainerSettings.class_traits(config=True)}
        given = settings_from_arguments(args)
        # Unbuffered: a Python cell's output streams live (any Python; 3.7 and 3.8 too).
        if "env" not in values["locked"] or given.get("env"):  # (a locked env takes nothing)
            given["env"] = {"PYTHONUNBUFFERED": "1", **values["env"], **given.get("env", {})}
        if args.image and values["image"] and not _looks_like_image(args.image):
            args.command = [args.image, *args.command]  # `%%container bash`: bash is the command
            args.image = None
        given["image"] = args.image or values["image"]
        if not given["image"]:
            msg = "No image: name one (`%%container IMAGE`) or set `%config ContainerMagics.image`."
            raise UsageError(msg)
        # The configured values as config, the cell's on top: lists add up, locked ones hold.
        return ContainerSettings(config=Config({"ContainerSettings": values}), **given)

    @staticmethod
    def _home_name(settings: ContainerSettings) -> str:
        digest = hashlib.sha256(settings.image.encode()).hexdigest()[:8]
        return f"magic-{default_kernel_name(settings.image)}-{digest}"

    def _prepare(
        self, args, cell: str | None, command: list[str], inside: str
    ) -> tuple[list[str], dict[str, bytes]]:
        """The command inside and the cell's files, which go in the folder seen as `inside`.
        Their paths go in as arguments: a runtime that relocates the folder rewrites them
        there only."""
        is_python = bool(PYTHON.fullmatch(os.path.basename(command[0])))
        if (args.input or args.output) and (cell is None or not is_python):
            msg = "-i/-o work only in a %%container cell run by a Python interpreter."
            raise UsageError(msg)
        if cell is None:
            return command, {}
        if not is_python:
            return [*command, f"{inside}/cell"], {"cell": cell.encode()}
        files = {"cell.py": cell.encode(), "run.py": cells.RUNNER.encode()}
        inputs = {}
        for name in args.input:
            if name not in self.shell.user_ns:
                raise UsageError(f"-i {name}: no such variable in the notebook.")
            try:
                inputs[name] = pickle.dumps(self.shell.user_ns[name], protocol=4)
            except Exception as err:  # pickling raises many types; each means "cannot send"
                msg = f"-i {name}: cannot send it into the container ({type(err).__name__}: {err})."
                raise UsageError(msg) from None
        if inputs:
            files["in.pickle"] = pickle.dumps(inputs, protocol=4)
        return [*command, f"{inside}/run.py", inside, *args.output], files

    def _execute(self, placement: Placement, launch, args, what: str) -> None:
        """Run, stream both outputs live (or capture them), raise on failure or interrupt."""
        captured: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def write(name: str, text: str) -> None:
            if args.out if name == "stdout" else args.err:
                captured[name].append(text)
            else:
                stream = sys.stdout if name == "stdout" else sys.stderr
                stream.write(text)
                stream.flush()

        try:
            result = cells.run(placement, launch, write)
        finally:
            for name, var in (("stdout", args.out), ("stderr", args.err)):
                if var:
                    self.shell.user_ns[var] = "".join(captured[name])
        if result.stopped:
            if args.raise_error:
                raise KeyboardInterrupt(f"the container process was {result.stopped}")
            print(f"The container process was {result.stopped}.")
            return
        if result.returncode != 0 and args.raise_error:
            raise ContainerCellError(result.returncode, launch.argv, what, result.tail)
        if result.returncode == 0 and args.output:
            back = placement.cell_file("out.pickle")
            if back is None:
                msg = "-o: the cell ended before its variables could be collected."
                raise UsageError(msg)
            self._bring_back(back)

    def _bring_back(self, pickled: bytes) -> None:
        """All -o values, or none: one that cannot load leaves the notebook as it was."""
        values = {}
        for name, data in pickle.loads(pickled).items():
            try:
                values[name] = pickle.loads(data)
            except Exception as err:  # unpickling raises many types; each means "cannot load"
                msg = (
                    f"-o {name}: cannot load it in the notebook ({type(err).__name__}: {err}); "
                    "its class must come from a module both sides import."
                )
                raise UsageError(msg) from None
        self.shell.user_ns.update(values)


def _looks_like_image(word: str) -> bool:
    """An image named on the line, not a command (`bash`, `/opt/conda/bin/python`)."""
    return "://" in word or word.endswith(IMAGE_SUFFIXES) or os.path.isdir(word)

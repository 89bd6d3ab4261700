"""The argv of an installed kernel spec: the kernel in its container for every client.

Some clients ignore `metadata.kernel_provisioner` and run a spec's argv as it is (VS Code:
microsoft/vscode-jupyter#14172); a bare `python3 ...` would then run on the host, outside the
image. So `container-kernel install` writes

    [PYTHON, "-m", "container_kernel.faces.spec_argv", "--spec-dir", "{resource_dir}",
     "--connection-file", "{connection_file}", "--", *the kernel's own argv]

with the absolute path of a Python that has this package. Run directly, this module reads the
spec's settings from its kernel.json (and the site's from Jupyter's config files), starts the
kernel through the same placement as the provisioner, stays as its parent to route signals
(a client signals this process's group: the kernel must get an interrupt once) and ends its
session when it exits. With the provisioner present, it strips this prefix: nothing is wrapped
twice and nothing of ours runs at start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ..ground import processes
from ..ground.errors import ContainerKernelError
from ..launch.plan import Launch
from ..placements import placement_for
from ..placements.base import Placement
from ..settings import ContainerSettings
from .kernelspecs import SPEC_ARGV_MODULE

PROVISIONER = "container-provisioner"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {SPEC_ARGV_MODULE}",
        description="Run a container kernel spec's kernel (what its argv runs without a "
        "provisioner).",
    )
    parser.add_argument("--spec-dir", required=True, help="The kernel spec's folder.")
    parser.add_argument("--connection-file", required=True, help="The kernel's connection file.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the kernel's argv inside")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the kernel's argv goes after --")

    processes.die_with_parent()  # the client gone (even SIGKILLed): so is the kernel
    placement, status = None, None
    try:
        placement, spec = _placement(Path(args.spec_dir))
        launch = placement.prepare(
            command,
            connection_file=args.connection_file,
            cwd=os.getcwd(),
            host_env=os.environ,
            named_env=list(spec.get("env", {})),
        )
        status = _run(placement, launch)
    except (ContainerKernelError, OSError) as err:
        print(f"container-kernel: {err}", file=sys.stderr)
        return 1
    finally:
        if placement is not None:
            placement.end(failed_start=status is None)
    if status < 0:  # the kernel died by a signal: so do we, as a shell would report it
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _placement(spec_dir: Path) -> tuple[Placement, dict]:
    """The kernel's placement as its spec and the site's Jupyter config describe it."""
    spec_file = spec_dir / "kernel.json"
    spec = json.loads(spec_file.read_text())
    provisioner = spec.get("metadata", {}).get("kernel_provisioner", {})
    if provisioner.get("provisioner_name") != PROVISIONER:
        msg = f"{spec_file} names no {PROVISIONER} in metadata.kernel_provisioner."
        raise ContainerKernelError(msg)
    settings = ContainerSettings(**provisioner.get("config", {}))  # (and the site's files)
    language = spec.get("language", "")
    placement = placement_for(settings, spec_dir.name, language, progress=_to_stderr)
    if not placement.listens_as_told:  # the client reads ports we cannot tell it
        msg = (
            f"placement={settings.placement} needs the container-provisioner: this client ignores "
            "it (use JupyterLab, Notebook or nbclient, or a spec with placement=local)."
        )
        raise ContainerKernelError(msg)
    placement.spec_file = str(spec_dir / "kernel.json")
    return placement, spec


def _to_stderr(line: str) -> None:
    """A registry image's first pull: the client shows or logs the kernel's stderr."""
    print(f"container-kernel: {line}", file=sys.stderr, flush=True)


def _run(placement: Placement, launch: Launch) -> int:
    """Start the runtime in a group of its own (the client's group signals reach us alone),
    route every signal we get to it, and return its exit status once it is gone."""
    process = placement.start(launch)
    routed = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}
    for signum in routed:
        with contextlib.suppress(OSError, ValueError):  # glibc's reserved real-time signals
            signal.signal(signum, lambda signum, _: placement.signal(process, signum))
    return placement.wait(process)


if __name__ == "__main__":
    sys.exit(main())

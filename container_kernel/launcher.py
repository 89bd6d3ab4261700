"""The argv of an installed kernel spec: the kernel in its container for every client.

Some clients ignore `metadata.kernel_provisioner` and run a spec's argv as it is (VS Code:
microsoft/vscode-jupyter#14172); a bare `python3 ...` would then run on the host, outside the
image. So `container-kernel install` writes

    [PYTHON, "-m", "container_kernel.launcher", "--spec-dir", "{resource_dir}",
     "--connection-file", "{connection_file}", "--", *the kernel's own argv]

with the absolute path of a Python that has this package. Run directly, this module reads the
spec's settings from its kernel.json (and the site's from Jupyter's config files), starts the
kernel through the same KernelContainer as the provisioner, stays as its parent to route signals
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

from . import processes
from .errors import ContainerKernelError
from .kernel import LAUNCHER_MODULE, KernelContainer
from .launch import Launch
from .settings import ContainerSettings

PROVISIONER = "container-provisioner"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {LAUNCHER_MODULE}",
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
    container, status = None, None
    try:
        container, spec = _container(Path(args.spec_dir))
        launch = container.prepare(
            command,
            connection_file=args.connection_file,
            cwd=os.getcwd(),
            host_env=os.environ,
            named_env=list(spec.get("env", {})),
        )
        status = _run(container, launch)
    except (ContainerKernelError, OSError) as err:
        print(f"container-kernel: {err}", file=sys.stderr)
        return 1
    finally:
        if container is not None:
            container.end(failed_start=container.session is not None and status is None)
    if status < 0:  # the kernel died by a signal: so do we, as a shell would report it
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _container(spec_dir: Path) -> tuple[KernelContainer, dict]:
    """The kernel's container as its spec and the site's Jupyter config describe it."""
    spec_file = spec_dir / "kernel.json"
    spec = json.loads(spec_file.read_text())
    provisioner = spec.get("metadata", {}).get("kernel_provisioner", {})
    if provisioner.get("provisioner_name") != PROVISIONER:
        msg = f"{spec_file} names no {PROVISIONER} in metadata.kernel_provisioner."
        raise ContainerKernelError(msg)
    settings = ContainerSettings(**provisioner.get("config", {}))  # (and the site's files)
    if settings.launcher != "local":
        msg = (
            f"launcher={settings.launcher} needs the container-provisioner: this client ignores "
            "it (use JupyterLab, Notebook or nbclient, or a spec with launcher=local)."
        )
        raise ContainerKernelError(msg)
    language = spec.get("language", "")
    return KernelContainer(settings, spec_dir.name, language, progress=_to_stderr), spec


def _to_stderr(line: str) -> None:
    """A registry image's first pull: the client shows or logs the kernel's stderr."""
    print(f"container-kernel: {line}", file=sys.stderr, flush=True)


def _run(container: KernelContainer, launch: Launch) -> int:
    """Start the runtime in a group of its own (the client's group signals reach us alone),
    route every signal we get to it, and return its exit status once it is gone."""
    process = container.start(launch)
    routed = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}
    for signum in routed:
        with contextlib.suppress(OSError, ValueError):  # glibc's reserved real-time signals
            signal.signal(signum, lambda signum, _: container.route_signal(process, signum))
    return container.wait(process)


if __name__ == "__main__":
    sys.exit(main())

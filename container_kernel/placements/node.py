"""The kernel's side of a scheduler's job: `python -m container_kernel.placements.node`, run on
the compute node (by srun: slurm.py).

The server writes one JSON line on its stdin: the settings, the kernel's argv and its connection
info with the key (never in argv or the environment, where `ps`, `scontrol` and job records
would show it), ports 0, and which of the job's variables name the server's address and the
job. This agent starts the container through the same placement as a local kernel (Here: clean
environment, fake home, private /tmp, the session mark), so the ports are chosen here, where the
kernel binds them, and answers on stdout with one JSON line: the ports the kernel wrote back and
this node's address on the route to the server. Then it takes signals from its stdin
({"signal": N}), routed as locally: an interrupt reaches the kernel and what it runs exactly
once (the scheduler would signal every process of the step, and Apptainer's starter would
forward a second one). When its stdin closes (the server is gone, even SIGKILLed) or the kernel
exits, it ends the kernel's session and exits, and so does the job. A cell is the same without
a connection file: its files come in the request, its output goes out on ours.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from ..launch.sessions import sessions_root
from ..settings import ContainerSettings
from .here import Here
from .slurm import PORTS


def main() -> int:
    request = json.loads(sys.stdin.readline())
    settings = ContainerSettings(**{**request["settings"], "placement": "local"})
    here = Here(settings, request["kernel_name"], request.get("language", ""))
    if request.get("mode") == "cell":
        return _cell(here, request)
    process = None
    try:
        address = _address_facing_the_server(request["variables"]["server"])
        launch, copy = _prepare(here, request, address)
        # our stdout carries the answer alone
        process = here.start(launch, stdin=subprocess.DEVNULL, stdout=sys.stderr)
        ports = _ports_written_back(copy, process)
        if ports is None:
            return _finish(here, process)
        answer = {"ip": address, "job": os.environ.get(request["variables"]["job"])}
        print(json.dumps({"ready": {**answer, **ports}}), flush=True)
        threading.Thread(target=_take_signals, args=(here, process), daemon=True).start()
        return _finish(here, process)
    except Exception as err:  # the one line the server shows as the start's failure
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return 1
    finally:
        if process is not None and process.poll() is None:
            here.signal(process, signal.SIGKILL)
        here.end()


def _prepare(here: Here, request: dict, address: str):
    """The container's launch, its connection file written for ports chosen here, on the
    address the server reaches (not 0.0.0.0: every host of the cluster network would)."""
    info = {**dict.fromkeys(PORTS, 0), **request["connection"], "ip": address}
    staged = sessions_root() / f"node-{uuid.uuid4().hex}.json"  # (may be shared by hosts)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(info, handle)
    command = [arg.replace(request["connection_file"], str(staged)) for arg in request["command"]]
    try:
        launch = here.prepare(
            command,
            connection_file=str(staged),
            cwd=_cwd(request),
            host_env={**os.environ, **request["named_values"]},
            named_env=list(request["named_values"]),
        )
    finally:
        staged.unlink()
    return launch, here.connection_copy


def _cell(here: Here, request: dict) -> int:
    """A %%container cell: its files written where the container sees them, its output on ours
    (srun's, streamed to the notebook), its exit status ours."""
    try:
        files = {name: base64.b64decode(data) for name, data in request["files"].items()}
        launch = here.prepare(
            request["command"], connection_file=None, cwd=_cwd(request), host_env=os.environ,
            files=files,
        )  # fmt: skip
        process = here.start(launch, stdin=subprocess.DEVNULL)
        threading.Thread(target=_take_signals, args=(here, process), daemon=True).start()
        return _finish(here, process)
    finally:
        here.end()


def _cwd(request: dict) -> str:
    return request["cwd"] if os.path.isdir(request["cwd"]) else "/"


def _ports_written_back(copy: Path, process: subprocess.Popen) -> dict | None:
    """The ports ipykernel bound and wrote back into its connection file; None if it died."""
    while process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(copy.read_text())
            if all(info.get(port) for port in PORTS):
                return {port: info[port] for port in PORTS}
        time.sleep(0.02)
    return None


def _address_facing_the_server(variable: str) -> str:
    """This node's address on the route to the host the job was started from (no DNS)."""
    server = os.environ.get(variable)
    if not server:
        msg = f"{variable} is not set: run this in the scheduler's job (srun)."
        raise RuntimeError(msg)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((server, 9))  # no packet is sent: only the route is looked up
        return probe.getsockname()[0]


def _take_signals(here: Here, process: subprocess.Popen) -> None:
    """Signals from the server, routed as for a local kernel; end of input: end everything."""
    for line in sys.stdin:
        if signum := json.loads(line).get("signal"):
            here.signal(process, signum)
    here.signal(process, signal.SIGKILL)  # the server is gone: the kernel goes too
    here.exited(None)


def _finish(here: Here, process: subprocess.Popen) -> int:
    status = here.wait(process)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    # Interrupts come as messages; a handler, not SIG_IGN, which the container would inherit.
    signal.signal(signal.SIGINT, lambda *_: None)
    sys.exit(main())

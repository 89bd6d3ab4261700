"""Under a real Jupyter Server: a start that fails tells the client why, and the server still
stops on its first SIGTERM."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(jupyter_dirs, tmp_path):
    """A jupyter server on 127.0.0.1 seeing the test's kernel specs; yields (url, token, proc)."""
    port, token = free_port(), secrets.token_hex(16)
    root = tmp_path / "root"
    root.mkdir()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         *(["--allow-root"] if os.getuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
    yield url, token, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


def start_kernel(url: str, token: str, name: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/api/kernels",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
@pytest.mark.parametrize("broken", ["image", "kernel"])
def test_a_failed_start_tells_the_client_why_and_the_server_still_stops(
    server, kernel_spec, broken, tmp_path
):
    url, token, proc = server
    if broken == "image":
        name = kernel_spec("ck-missing", image=str(tmp_path / "missing.sif"))
        cause = f"Image not found: {tmp_path / 'missing.sif'}"
    else:
        name = kernel_spec("ck-broken")
        spec_file = Path(os.environ["JUPYTER_PATH"], "kernels", name, "kernel.json")
        spec = json.loads(spec_file.read_text())
        spec["argv"][2] = "no_such_kernel_module"
        spec_file.write_text(json.dumps(spec))
        cause = "/usr/bin/python3: No module named no_such_kernel_module"
    started = time.monotonic()
    status, reply = start_kernel(url, token, name)
    assert time.monotonic() - started < 20
    assert status == 500
    assert reply["message"].startswith(cause)  # not "Unhandled error"
    status, _ = start_kernel(url, token, kernel_spec("ck-good"))  # a kernel that runs
    assert status == 201
    proc.send_signal(signal.SIGTERM)
    # jupyter_client keeps a failed start in `_pending_kernels`; shutting all kernels down then
    # raised "Kernel does not exist" and the server never exited
    assert proc.wait(timeout=30) == 0  # (a hang raises TimeoutExpired)

"""Encrypted channels for kernels on compute nodes (settings `encryption`): what crosses the
veth between the server and the node (`scripts/slurm-cluster`), read with a packet socket, holds
the executed code in clear text without encryption and never with it."""

from __future__ import annotations

import json
import os
import pwd
import socket
import threading
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from kernels import run, running_kernel
from slurm_cluster import slurm_fixture  # noqa: F401

from container_kernel.faces import cli
from container_kernel.ground.errors import ContainerKernelError

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True),
]

HOST_SIDE = "ck-node1-h"  # the server's end of the compute node's veth pair
ETH_P_ALL = 0x0003


class Capture:
    """Every frame that crosses `interface` while it runs, as one byte string."""

    def __init__(self, interface: str) -> None:
        self.socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.socket.bind((interface, 0))
        self.socket.settimeout(0.2)
        self.frames: list[bytes] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self.stopping.is_set():
            try:
                self.frames.append(self.socket.recv(65536))
            except TimeoutError:
                continue

    def __enter__(self) -> Capture:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        time.sleep(0.5)  # the last replies
        self.stopping.set()
        self.thread.join()
        self.socket.close()

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)


@pytest.fixture
def cluster(slurm, runtime, jupyter_dirs, monkeypatch) -> str:
    """The node's address; USER set, as ch-run needs it in the job; our own Jupyter folders."""
    monkeypatch.setenv("USER", pwd.getpwuid(os.getuid()).pw_name)
    return slurm.address


def install(image: Path, name: str, capsys, *flags: str) -> tuple[dict, str]:
    """`container-kernel install` as a user runs it: the spec it wrote, and what it printed."""
    argv = ["install", "--name", name, "--runtime", "charliecloud", "--placement", "slurm"]
    assert cli.main([*argv, *flags, str(image)]) == 0
    printed = capsys.readouterr().out
    spec_file = Path(os.environ["JUPYTER_DATA_DIR"], "kernels", name, "kernel.json")
    return json.loads(spec_file.read_text()), printed


def traffic_of(name: str, cwd: Path, marker: str) -> tuple[bytes, object]:
    """What crossed to and from the node while a kernel of spec `name` ran code naming
    `marker`, and the manager's public CurveZMQ key (None: not encrypted)."""
    with running_kernel(name, str(cwd)) as (km, kc):
        with Capture(HOST_SIDE) as capture:
            assert run(kc, f"print({marker!r}[::-1])").strip() == marker[::-1]
        return capture.data, km.curve_publickey


def test_install_detects_encryption_and_the_channels_are_encrypted(
    cluster, ipykernel7_image, notebook_dir, capsys
):
    spec, printed = install(ipykernel7_image, "ck-curve", capsys)
    assert spec["metadata"]["supported_encryption"] == ["curve"]
    assert "ipykernel 7." in printed
    assert "encryptable channels" in printed
    marker = f"ck-clear-text-{os.urandom(4).hex()}"
    data, public_key = traffic_of("ck-curve", notebook_dir, marker)
    assert public_key is not None
    assert len(data) > 2000  # the kernel's traffic did cross the veth
    assert marker.encode() not in data
    assert marker[::-1].encode() not in data  # nor its output


def test_without_encryption_the_code_crosses_in_clear_text(
    cluster, ipykernel7_image, image, notebook_dir, capsys
):
    """The capture above would see the code: with encryption off, and with an ipykernel 6."""
    spec, _ = install(ipykernel7_image, "ck-off", capsys, "--encryption", "off")
    assert spec["metadata"]["kernel_provisioner"]["config"]["encryption"] == "off"
    spec, printed = install(image, "ck-six", capsys)
    assert "supported_encryption" not in spec["metadata"]
    assert "no encryption (ipykernel < 7)" in printed
    for name in ("ck-off", "ck-six"):
        marker = f"ck-clear-text-{os.urandom(4).hex()}"
        data, public_key = traffic_of(name, notebook_dir, marker)
        assert public_key is None
        assert marker.encode() in data


def test_a_site_requiring_encryption_refuses_a_kernel_that_cannot(
    cluster, image, notebook_dir, capsys
):
    install(image, "ck-six", capsys, "--encryption", "required")
    km = KernelManager(kernel_name="ck-six")
    started = time.monotonic()
    with pytest.raises(
        ContainerKernelError, match=r"^Encrypted channels are required .* ipykernel 7"
    ):
        km.start_kernel(cwd=str(notebook_dir))
    assert time.monotonic() - started < 5

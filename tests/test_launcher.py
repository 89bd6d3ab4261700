"""An installed spec's argv runs the kernel in its image for clients that ignore provisioners
(VS Code), and adds nothing when the provisioner is there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
from kernels import run

from container_kernel.faces.kernelspecs import spec_argv
from container_kernel.launch.sessions import marked_processes, sessions_root

pytestmark = pytest.mark.lifecycle

# The image's python3 (/bin is /usr/bin in Debian; Singularity's PATH puts /bin first).
IMAGE_PYTHON = ("/usr/bin/python3", "/bin/python3")
INNER = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@pytest.fixture
def installed_spec(kernel_spec, jupyter_dirs):
    """A spec as `container-kernel install` writes it: the launcher's argv."""

    def write(name: str = "ck-launcher", **config) -> str:
        kernel_spec(name, **config)
        spec_file = jupyter_dirs["JUPYTER_PATH"] / "kernels" / name / "kernel.json"
        spec = json.loads(spec_file.read_text())
        spec["argv"] = spec_argv(INNER)
        spec_file.write_text(json.dumps(spec))
        return name

    return write


def without_provisioner(name: str) -> KernelManager:
    """What VS Code does: the spec's argv, run as it is; kernel.json on disk unchanged."""
    connection_file = Path(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")
    km = KernelManager(kernel_name=name, connection_file=str(connection_file))
    km.kernel_spec.metadata = {}  # the loaded spec only: LocalProvisioner runs the argv
    return km


def started(km: KernelManager, cwd: Path):
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def test_a_client_without_provisioners_gets_the_container(  # noqa: PLR0917
    installed_spec, notebook_dir, image, monkeypatch, real_home_tmp, request
):
    monkeypatch.setenv("CK_SENTINEL", "leaked")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret")
    km = without_provisioner(installed_spec(env={"CK_LITERAL": "$(id) 'q'"}))
    kc = started(km, notebook_dir)
    try:
        assert type(km.provisioner).__name__ == "LocalProvisioner"
        out = run(kc, "import os, sys, json; print(json.dumps([sys.executable, dict(os.environ)]))")
        executable, env = json.loads(out)
        assert executable in IMAGE_PYTHON
        assert executable != sys.executable
        assert Path(image, "usr/bin/python3").exists()
        assert "CK_SENTINEL" not in env
        assert "JUPYTERHUB_API_TOKEN" not in env
        assert env["CK_LITERAL"] == "$(id) 'q'"
        assert env["PYTHONNOUSERSITE"] == "1"
        # (SingularityCE 3.0-3.5 cannot mount a notebook under /tmp there: /mnt/notebook)
        legacy_3x = request.node.callspec.params["runtime"] == "singularity-3.4"
        expected = "/mnt/notebook" if legacy_3x else str(notebook_dir)
        assert run(kc, "import os; print(os.getcwd())").strip() == expected
        real_home_probe = f"import os; print(os.path.exists({str(real_home_tmp)!r}))"
        assert run(kc, real_home_probe).strip() == "False"  # the home inside is a fake one
        mark = env["CONTAINER_KERNEL_SESSION"]
        # one interrupt, exactly once: a real-time signal queues, so deliveries count exactly
        run(kc, "import signal; hits = []")
        run(kc, "signal.signal(signal.SIGRTMIN + 1, lambda *_: hits.append(1))")
        km.signal_kernel(signal.SIGRTMIN + 1)  # LocalProvisioner signals the launcher's group
        time.sleep(0.5)
        assert run(kc, "print(len(hits))").strip() == "1"
        run(kc, "import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True)")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    deadline = time.monotonic() + 10
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked_processes(mark) == []
    assert list(sessions_root().iterdir()) == []


def test_an_interrupt_stops_the_cell_once_without_a_provisioner(installed_spec, notebook_dir):
    km = without_provisioner(installed_spec())
    kc = started(km, notebook_dir)
    code = (
        "import time\nhits = 0\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
        "    hits += 1\n    try:\n        time.sleep(1.5)\n    except KeyboardInterrupt:\n"
        "        hits += 1\nprint('interrupts', hits)"
    )
    try:
        kc.execute(code)
        time.sleep(2)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=20)
        assert reply["content"]["status"] == "ok"
        assert run(kc, "print('interrupts', hits)").strip() == "interrupts 1"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_with_the_provisioner_nothing_is_wrapped_twice(installed_spec, notebook_dir):
    km = KernelManager(kernel_name=installed_spec())
    kc = started(km, notebook_dir)
    try:
        assert type(km.provisioner).__name__ == "ContainerProvisioner"
        assert run(kc, "import sys; print(sys.executable)").strip() in IMAGE_PYTHON
        cmdlines = [
            Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in marked_processes(km.provisioner._placement.session.name)
        ]
        assert cmdlines
        assert not [c for c in cmdlines if b"container_kernel.faces.spec_argv" in c]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_failed_start_without_a_provisioner_says_why(installed_spec, notebook_dir, tmp_path):
    km = without_provisioner(installed_spec(image=str(tmp_path / "gone.sif")))
    km.start_kernel(cwd=str(notebook_dir), stderr=(err := (tmp_path / "err").open("w+")))
    try:
        deadline = time.monotonic() + 10
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not km.is_alive()
        err.seek(0)
        assert "container-kernel: Image not found" in err.read()
    finally:
        km.shutdown_kernel(now=True)
        err.close()
    assert os.listdir(sessions_root()) == []


def test_the_sites_config_reaches_a_kernel_without_provisioner(
    installed_spec, notebook_dir, tmp_path, monkeypatch
):
    site = tmp_path / "etc-jupyter"
    site.mkdir()
    (site / "jupyter_server_config.py").write_text(
        'c.ContainerSettings.env = {"OMP_NUM_THREADS": "1", "WHO": "site"}\n'
    )
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(site))
    km = without_provisioner(installed_spec(env={"WHO": "spec"}))
    kc = started(km, notebook_dir)
    try:
        out = run(kc, "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['WHO'])")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert out.split() == ["1", "spec"]


def test_a_sigkilled_launcher_takes_its_kernel_along(installed_spec, notebook_dir):
    """VS Code kills the spec's process (the launcher) with SIGKILL: the kernel, its runtime
    and its session go too, on every runtime (real Apptainer drops the parent-death signal)."""
    km = without_provisioner(installed_spec())
    kc = started(km, notebook_dir)
    try:
        mark = run(kc, "import os; print(os.environ['CONTAINER_KERNEL_SESSION'])").strip()
        kernel = marked_processes(mark)
        assert kernel
        os.kill(km.provisioner.pid, signal.SIGKILL)  # the launcher
        deadline = time.monotonic() + 10
        while (marked_processes(mark) or (sessions_root() / mark).exists()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert marked_processes(mark) == []
        assert not (sessions_root() / mark).exists()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_connection_file_that_is_not_one_fails_at_once(installed_spec, notebook_dir):
    """`--connection-file /dev/zero` used to fill the session's folder before failing."""
    argv = spec_argv(INNER)
    spec_dir = Path(os.environ["JUPYTER_PATH"], "kernels", installed_spec())
    argv = [a.replace("{resource_dir}", str(spec_dir)).replace("{connection_file}", "/dev/zero")
            for a in argv]  # fmt: skip
    started_at = time.monotonic()
    out = subprocess.run(argv, cwd=notebook_dir, capture_output=True, text=True, timeout=30,
                         check=False)  # fmt: skip
    assert time.monotonic() - started_at < 10
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "container-kernel: /dev/zero is not a connection file (a small JSON file)."
    )
    assert os.listdir(sessions_root()) == []

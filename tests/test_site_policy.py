"""One site policy that every client applies: `container_kernel_config.py` in a folder of
Jupyter's config path, read by the settings themselves, whatever starts the kernel.

Each client starts a kernel of the same spec and prints a value only the site's file sets; a
spec that undoes a locked setting is refused by each. `jupyter console` also shows that a
client which only sends a shutdown request and exits leaves nothing of the kernel's session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from kernels import run, running_kernel

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch.sessions import marked_processes, sessions_root

pytestmark = pytest.mark.security

PROBE = "import os; print('site:', os.environ.get('SITE_POLICY'))"
POLICY = """\
c.ContainerSettings.env = {"SITE_POLICY": "applied"}
c.ContainerSettings.cleanenv = True
c.ContainerSettings.locked = ["cleanenv"]
"""
BIN = Path(sys.executable).parent


@pytest.fixture
def site(tmp_path, monkeypatch, jupyter_dirs) -> Path:
    """The site's folder on Jupyter's config path, holding its policy file; no user config."""
    folder = tmp_path / "etc-jupyter"
    folder.mkdir()
    (folder / "container_kernel_config.py").write_text(POLICY)
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(folder))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "user-config"))
    return folder


def notebook(folder: Path, name: str) -> Path:
    path = folder / "probe.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)])
    nb.metadata["kernelspec"] = {"name": name, "display_name": name, "language": "python"}
    nbformat.write(nb, path)
    return path


def outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))


def client_run(client: str, name: str, folder: Path) -> subprocess.CompletedProcess:
    """Run PROBE in a kernel of spec `name` through `client`, as a user would."""
    if client == "papermill":
        argv = [BIN / "papermill", notebook(folder, name), folder / "out.ipynb", "-k", name]
    elif client == "nbconvert":
        argv = [BIN / "jupyter-nbconvert", "--to", "notebook", "--execute",
                f"--ExecutePreprocessor.kernel_name={name}", "--output", "out.ipynb",
                notebook(folder, name)]  # fmt: skip
    elif client == "jupyter-run":
        (folder / "probe.py").write_text(PROBE)
        argv = [BIN / "jupyter-run", f"--kernel={name}", folder / "probe.py"]
    else:  # a script's bare KernelManager
        script = (
            "import sys; from jupyter_client.manager import start_new_kernel\n"
            "km, kc = start_new_kernel(kernel_name=sys.argv[1])\n"
            f"kc.execute_interactive({PROBE!r}, timeout=30)\n"
            "km.shutdown_kernel()\n"
        )
        argv = [sys.executable, "-c", script, name]
    out = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=120, check=False)
    if (folder / "out.ipynb").exists():
        out.stdout += outputs(folder / "out.ipynb")
    return out


CLIENTS = ["kernelmanager-script", "papermill", "nbconvert", "jupyter-run"]


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_applies_the_sites_policy_file(kernel_spec, site, notebook_dir, client):
    out = client_run(client, kernel_spec(), notebook_dir)
    assert "site: applied" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("client", CLIENTS)
def test_no_client_lets_a_spec_undo_a_locked_setting(kernel_spec, site, notebook_dir, client):
    out = client_run(client, kernel_spec(cleanenv=False), notebook_dir)
    assert "site: applied" not in out.stdout
    assert "The site fixes `cleanenv`" in out.stdout + out.stderr


def test_in_process_managers_and_the_launcher_apply_it(kernel_spec, site, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (_, kc):
        assert run(kc, PROBE).strip() == "site: applied"
    undone = running_kernel(kernel_spec("undone", cleanenv=False), str(notebook_dir))
    with pytest.raises(ContainerKernelError, match="The site fixes `cleanenv`"), undone:
        pass


def test_a_site_value_of_the_wrong_type_is_one_line(kernel_spec, site, notebook_dir):
    (site / "container_kernel_config.py").write_text('c.ContainerSettings.standby = "sometimes"\n')
    out = client_run("kernelmanager-script", kernel_spec(), notebook_dir)
    said = [line for line in out.stderr.splitlines() if "container-kernel setting" in line]
    assert said, out.stderr
    assert "standby" in said[0]


def test_jupyter_console_applies_it_and_leaves_nothing_after_its_shutdown(
    kernel_spec, site, notebook_dir
):
    """The console sends a shutdown request and exits without the provisioner's cleanup: once
    the kernel has exited, nothing of its session stays (its standby, its folder, the key)."""
    before = set(os.listdir(sessions_root()))
    console = subprocess.run(
        [BIN / "jupyter-console", f"--kernel={kernel_spec()}", "--simple-prompt",
         "--ZMQTerminalInteractiveShell.include_other_output=False"],
        input=f"{PROBE}\nimport time; time.sleep(2)\nexit\n",
        cwd=notebook_dir, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "site: applied" in console.stdout, console.stdout + console.stderr
    deadline = time.monotonic() + 10
    while (left := set(os.listdir(sessions_root())) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == set()
    assert not [p for mark in left for p in marked_processes(mark, variants=True)]
    assert console.returncode == 0

"""`make demo`: a real containerised kernel, end to end, on the embedded default image.

Installs a kernel spec for the image (with Apptainer if installed, else Charliecloud), executes
notebooks/demo.ipynb in it headless with nbclient, and prints what the kernel saw beside the host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import nbformat
from jupyter_core.paths import jupyter_data_dir
from nbclient import NotebookClient

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.runtimes import find_runtime

REPO = Path(__file__).resolve().parent.parent
NAME = "container-demo"
DISPLAY_NAME = "Python 3 (container-kernel demo)"
# What a host shell typically leaks; the kernel must see none of it.
HOST_LEAKS = {
    "PYTHONPATH": "/host/site-packages",
    "PYTHONSTARTUP": "/host/startup.py",
    "JUPYTERHUB_API_TOKEN": "not-for-containers",
}


def pick_runtime() -> str:
    """Apptainer if installed, else Charliecloud: what `runtime = auto` picks."""
    try:
        runtime = find_runtime("auto")
    except ContainerKernelError as err:
        sys.exit(f"demo: {err}")
    return "charliecloud" if runtime.name == "charliecloud" else Path(runtime.executable).name


def install_spec(image: str, runtime: str) -> None:
    command = [Path(sys.executable).parent / "container-kernel", "install", image, "--name", NAME,
               "--display-name", DISPLAY_NAME, "--runtime", runtime]  # fmt: skip
    subprocess.run(command, check=True)


def execute(notebook: Path, out: Path) -> dict:
    """Run the notebook in the container kernel; return its proof cell's JSON."""
    nb = nbformat.read(notebook, as_version=4)
    os.environ.update(HOST_LEAKS)
    NotebookClient(
        nb, kernel_name=NAME, timeout=120, resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()
    out.parent.mkdir(exist_ok=True)
    nbformat.write(nb, out)
    proof_cell = next(c for c in nb.cells if "proof" in c.metadata.get("tags", []))
    return json.loads(proof_cell.outputs[0]["text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True, help="the demo image (scripts/build-image)")
    image = parser.parse_args().image
    runtime = pick_runtime()
    install_spec(image, runtime)
    executed = REPO / "build" / "demo.ipynb"
    try:
        proof = execute(REPO / "notebooks" / "demo.ipynb", executed)
    except ContainerKernelError as err:
        sys.exit(f"demo: {err}")

    leaked = sorted(set(HOST_LEAKS) & set(proof["environment"]))
    fake_home = Path(jupyter_data_dir(), "container-kernel", "homes", NAME)
    host_os = platform.freedesktop_os_release()["PRETTY_NAME"]
    rows = [
        ("", "inside the kernel", "on the host"),
        ("python", proof["python"], f"{sys.executable} {platform.python_version()}"),
        ("os", proof["os"], host_os),
        ("HOME", f"{proof['home']} (the fake home)", os.environ.get("HOME", "")),
        ("host leaks", ", ".join(leaked) or "none", ", ".join(sorted(HOST_LEAKS))),
        ("variables", str(len(proof["environment"])), str(len(os.environ))),
    ]
    print(f"\nnotebooks/demo.ipynb ran in kernel {DISPLAY_NAME!r} ({runtime}); output: {executed}")
    for label, inside, host in rows:
        print(f"  {label:11} {inside:44} {host}")
    print(f"  (the fake home {fake_home} is bound over {proof['home']} inside)")
    if leaked or proof["python"].split()[0] == sys.executable:
        sys.exit("demo: the kernel did not run isolated in the image")
    print(
        "\nOpen it in JupyterLab:\n"
        f"  {Path(sys.executable).parent}/pip install jupyterlab\n"
        f"  {Path(sys.executable).parent}/jupyter lab notebooks/demo.ipynb\n"
        f"and pick the kernel {DISPLAY_NAME!r}."
    )


if __name__ == "__main__":
    main()

"""A runtime another package registers works everywhere a built-in one does, with no change to
container-kernel: found by name, kernels started through the provisioner and through an installed
spec's argv, interrupts, nothing left behind, `%%container` cells, `check` and the CLI.

The package is tests/outside_runtime/ (`ck_outside_runtime.Wrapped`, Charliecloud's ch-run through
a site's wrapper script `wrapped-ch-run`, registered as `wrapped-ch` by its dist-info's entry
point); the `runtime` fixture below puts it on PYTHONPATH, so every process a test starts (the
kernel's client, the CLI, a kernel's launcher) finds it, as a site's installed package would be.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from kernels import run, running_kernel
from test_cli import container_kernel, installed, jupyter_folders
from test_doctor import lines
from test_launcher import started, without_provisioner

# A few of the lifecycle tests, collected here again: with the `runtime` fixture below, on the
# outside runtime (interrupts, restarts, and nothing outliving its kernel or its client).
from test_lifecycle import (  # noqa: F401
    test_a_client_that_dies_takes_everything_along,
    test_a_new_session_started_in_the_kernel_dies_with_it,
    test_interrupt_reaches_what_the_cell_runs,
    test_restart_ends_what_the_previous_kernel_started,
)

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.images.cache import ImageCache, local_image
from container_kernel.launch.sessions import sessions_root
from container_kernel.runtimes import find_runtime, names
from container_kernel.settings import ContainerSettings

OUTSIDE = Path(__file__).resolve().parent / "outside_runtime"
NAME = "wrapped-ch"
# The wrapper a site might put in front of ch-run: it notes each call, then becomes ch-run.
WRAPPER = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
exec {ch_run} "$@"
"""


@pytest.fixture
def wrapper_bin(tmp_path) -> Path:
    """A bin folder holding `wrapped-ch-run`, which logs to `calls.log` beside it."""
    ch_run = shutil.which("ch-run")
    assert ch_run, "ch-run is missing: apt-get install charliecloud-runtime"
    folder = tmp_path / "wrapper-bin"
    folder.mkdir()
    wrapper = folder / "wrapped-ch-run"
    wrapper.write_text(WRAPPER.format(log=folder / "calls.log", ch_run=ch_run))
    wrapper.chmod(0o755)
    return folder


@pytest.fixture
def runtime(wrapper_bin, monkeypatch) -> str:
    """Overrides conftest's: the `runtime` setting is the outside runtime's name, its package is
    on sys.path here and on PYTHONPATH for every process started, its wrapper first on PATH."""
    monkeypatch.syspath_prepend(str(OUTSIDE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(OUTSIDE), *filter(None, [os.environ.get("PYTHONPATH")])]
    ))  # fmt: skip
    monkeypatch.setenv("PATH", f"{wrapper_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("USER", raising=False)  # as conftest's charliecloud: the provisioner copes
    return NAME


# Whether a cell runs in the test image: its Python, its mark file (which the host lacks).
IN_IMAGE = "import os, sys; print(sys.executable, os.path.exists('/.container-kernel-image'))"


def calls(wrapper_bin: Path) -> str:
    """What the wrapper was called with, one call a line."""
    log = wrapper_bin / "calls.log"
    return log.read_text() if log.exists() else ""


def test_find_runtime_finds_it_by_name_and_by_executable(runtime, wrapper_bin, tmp_path):
    assert runtime in names()
    found = find_runtime(runtime)
    assert type(found).__module__ == "ck_outside_runtime"
    assert (found.name, found.executable) == (NAME, str(wrapper_bin / "wrapped-ch-run"))
    assert str(found).startswith("charliecloud 0.")  # its --version, through the wrapper
    assert not found.forwards_signals  # (ch-run's: the wrapper execs it)
    by_path = find_runtime("auto", str(wrapper_bin / "wrapped-ch-run"))
    assert type(by_path) is type(found)
    assert ContainerSettings(runtime="Wrapped-CH", site=False).runtime == NAME
    with pytest.raises(ContainerKernelError, match=r"^Unknown runtime 'nope': .*, wrapped-ch "):
        find_runtime("nope")
    # the image cache pulls through it as through Charliecloud (its own refusal, first)
    with pytest.raises(ContainerKernelError, match=r"^Charliecloud pulls docker:// images"):
        local_image("oras://127.0.0.1:5117/ck/x:1", found, ImageCache(tmp_path / "cache"))


def test_without_its_package_the_name_is_unknown():
    """The tests here pass because of the package on sys.path: without it, no such runtime."""
    assert NAME not in names()
    with pytest.raises(ContainerKernelError, match=r"^Unknown runtime 'wrapped-ch': installed "):
        find_runtime(NAME)


def test_a_kernel_runs_in_the_container_through_it(kernel_spec, notebook_dir, image, wrapper_bin):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        assert type(km.provisioner).__name__ == "ContainerProvisioner"
        assert run(kc, IN_IMAGE) == "/usr/bin/python3 True\n"
        assert not Path("/.container-kernel-image").exists()  # (the host has no such file)
    assert str(image) in calls(wrapper_bin)  # the wrapper ran the kernel's container
    assert list(sessions_root().iterdir()) == []


def test_a_container_cell_runs_with_it(jupyter_dirs, notebook_dir, image, runtime, wrapper_bin):
    setup = (
        "%load_ext container_kernel\n"
        f"%config ContainerMagics.image = {str(image)!r}\n"
        f"%config ContainerMagics.runtime = {runtime!r}\n"
    )
    body = f"%%container\n{IN_IMAGE}"
    with running_kernel("python3", str(notebook_dir)) as (_, kc):
        run(kc, setup)
        assert run(kc, body) == "/usr/bin/python3 True\n"
    assert str(image) in calls(wrapper_bin)


def test_the_cli_installs_and_checks_a_spec_with_it(tmp_path, monkeypatch, image, runtime,
                                                    wrapper_bin):  # fmt: skip
    """`install --runtime wrapped-ch` and `check`; the installed spec's argv (what a client
    without provisioners runs: the launcher, a process of its own) starts the kernel too."""
    folders = jupyter_folders(tmp_path, monkeypatch)
    out = container_kernel("install", str(image), "--runtime", runtime, "--name", "wrapped")
    assert out.returncode == 0, out.stderr
    spec = installed(folders / "user" / "kernels" / "wrapped")
    assert spec["metadata"]["kernel_provisioner"]["config"]["runtime"] == NAME
    out = container_kernel("check", "wrapped")
    assert out.returncode == 0, out.stdout + out.stderr
    facts = lines(out)
    assert facts["runtime"].startswith("ok charliecloud 0.")
    assert facts["runtime"].endswith(f"({wrapper_bin / 'wrapped-ch-run'})")
    assert facts["no-eval"] == "ok values go in from a file, with --env-no-expand"
    assert facts["GPUs"].startswith("ok none (NVIDIA: an image prepared once with")
    assert facts["kernel"].startswith("ok started, kernel_info reply in ")

    km = without_provisioner("wrapped")
    kc = started(km, tmp_path)
    try:
        assert type(km.provisioner).__name__ == "LocalProvisioner"
        assert run(kc, "import os; print(os.path.exists('/.container-kernel-image'))") == "True\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    out = container_kernel("install", str(image), "--runtime", "nope", "--name", "typo")
    assert out.returncode != 0
    assert "'wrapped-ch'" in out.stderr  # the error names the installed runtimes
    assert not (folders / "user" / "kernels" / "typo").exists()

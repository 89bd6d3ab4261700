"""`container-kernel` through its real command line, with isolated Jupyter folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from container_kernel import cli
from container_kernel.settings import ARGUMENTS, settings_from_arguments

RUNTIME_ARG = {"apptainer": "--env=EXTRA=1", "charliecloud": "--set-env=EXTRA=1"}


def container_kernel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "container_kernel.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def isolated(tmp_path, monkeypatch, runtime):
    """User and system kernel folders of our own; `runtime` puts the runtime under test on PATH."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return tmp_path


def test_install_list_check_remove(isolated, image, runtime):
    out = container_kernel(
        "install", str(image), "--runtime", runtime, "--name", "stack",
        "--display-name", "My stack", "-B", "/tmp", "--env", "A=$(x),y", "--pass-env", "OMP_*",
        "--home", "temporary", f"--runtime-arg={RUNTIME_ARG[runtime]}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "checking" in out.stdout
    assert "/usr/bin/python3 3.11" in out.stdout
    spec = json.loads((isolated / "user" / "kernels" / "stack" / "kernel.json").read_text())
    assert spec["display_name"] == "My stack"
    # the launcher by an absolute path (never PATH), then the kernel's argv inside
    assert spec["argv"] == [
        sys.executable, "-m", "container_kernel.launcher", "--spec-dir", "{resource_dir}",
        "--connection-file", "{connection_file}",
        "--", "python3", "-m", "ipykernel_launcher", "-f", "{connection_file}",
    ]  # fmt: skip
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "container-provisioner",
        "config": {
            "image": str(image),
            "runtime": runtime,
            "binds": ["/tmp"],
            "env": {"A": "$(x),y"},
            "pass_env": ["OMP_*"],
            "home": "temporary",
            "runtime_args": [RUNTIME_ARG[runtime]],
        },
    }
    listing = container_kernel("list")
    assert listing.stdout.split()[:2] == ["stack", str(image)]
    listed = json.loads(container_kernel("list", "--json").stdout)
    assert list(listed) == ["stack"]
    check = container_kernel("check", "stack")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("stack: /usr/bin/python3 3.11")
    removed = container_kernel("remove", "stack")
    assert removed.returncode == 0
    assert not (isolated / "user" / "kernels" / "stack").exists()


def test_install_with_prefix_and_default_name(isolated, image, runtime):
    out = container_kernel(
        "install", str(image), "--runtime", runtime, "--prefix", str(isolated / "p"), "--no-check"
    )
    assert out.returncode == 0, out.stderr
    assert (isolated / "p/share/jupyter/kernels/bookworm-ipykernel/kernel.json").exists()
    assert "checking" not in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["install", "/nonexistent.sif"], "Image not found: /nonexistent.sif"),
        (["install", "IMAGE", "-B", "data:/x"], "Malformed bind 'data:/x'"),
        (["install", "IMAGE", "--env", "NOVALUE"], "--env takes NAME=VALUE"),
        (["install", "IMAGE", "--home", "somewhere"], "home must be one of"),
        (["check", "nope"], "No container kernel spec named 'nope'"),
        (["remove", "nope"], "Not a container kernel spec: nope"),
    ],
)
def test_bad_input_gets_one_line(isolated, image, args, message):
    out = container_kernel(*[str(image) if a == "IMAGE" else a for a in args])
    assert out.returncode == 1
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_image_without_python_is_refused_at_install(isolated, tmp_path, runtime):
    empty_image = tmp_path / "empty-image"
    (empty_image / "tmp").mkdir(parents=True)
    out = container_kernel("install", str(empty_image), "--runtime", runtime)
    assert out.returncode == 1
    assert "python3 with ipykernel does not run in" in out.stderr
    assert not (isolated / "user" / "kernels").exists()


def test_every_settings_flag_reaches_a_setting():
    args = cli.build_parser().parse_args(
        ["install", "img", "--runtime", "apptainer", "--runtime-path", "/x", "-B", "/a",
         "--env", "K=V", "--pass-env", "P*", "--home", "none", "--home-root", "/h",
         "--no-cleanenv", "--gpu", "--share-tmp", "--runtime-arg=--rocm"]
    )  # fmt: skip
    values = settings_from_arguments(args)
    assert set(values) == {trait for _, trait, _ in ARGUMENTS}
    assert values["env"] == {"K": "V"}
    assert values["cleanenv"] is False
    assert values["share_tmp"] is True


def test_help_lists_the_settings():
    out = container_kernel("install", "--help")
    for flag in ("--bind", "--pass-env", "--home", "--no-cleanenv", "--gpu", "--sys-prefix"):
        assert flag in out.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "container-kernel"
    assert subprocess.run([script, "--help"], capture_output=True, check=False).returncode == 0
    assert os.access(script, os.X_OK)

"""The launch layer's policy: what may enter, what is bound where, what is refused."""

from __future__ import annotations

import pytest

from container_kernel.environment import container_environment
from container_kernel.errors import ContainerKernelError
from container_kernel.launch import NOTEBOOK_MOUNT, build_request, check_image, workdir_mount
from container_kernel.runtimes import Bind
from container_kernel.settings import ContainerSettings

HOST = {
    "PATH": "/usr/bin",
    "PYTHONPATH": "/home/me/lib",
    "JUPYTERHUB_API_TOKEN": "secret",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "JPY_SESSION_NAME": "a.ipynb",
    "OMP_NUM_THREADS": "4",
    "SPEC_VAR": "from spec",
}


def test_only_named_variables_enter():
    env = container_environment(
        HOST, named=["SPEC_VAR"], patterns=["OMP_*"], values={"MINE": "1", "OMP_NUM_THREADS": "2"}
    )
    assert env == {
        "PYTHONNOUSERSITE": "1",
        "JPY_SESSION_NAME": "a.ipynb",
        "OMP_NUM_THREADS": "2",
        "SPEC_VAR": "from spec",
        "MINE": "1",
    }


def test_secrets_enter_only_when_named():
    env = container_environment(HOST, patterns=["JUPYTERHUB_*"])
    assert env["JUPYTERHUB_API_TOKEN"] == "secret"
    assert "AWS_SECRET_ACCESS_KEY" not in env


@pytest.mark.parametrize(
    ("cwd", "home", "expected"),
    [
        ("/work/nb", "/home/me", Bind("/work/nb", "/work/nb", staging="notebook")),
        ("/home/me/nb", "/home/me", Bind("/home/me/nb", "/home/me/nb", staging="notebook")),
        ("/home/me", "/home/me", Bind("/home/me", NOTEBOOK_MOUNT, staging="notebook")),
        ("/home", "/home/me", Bind("/home", NOTEBOOK_MOUNT, staging="notebook")),
        ("/home/me", None, Bind("/home/me", "/home/me", staging="notebook")),
        ("/", "/home/me", None),
        ("/opt", "/home/me", Bind("/opt", NOTEBOOK_MOUNT, staging="notebook")),
        ("/opt/nb", "/home/me", Bind("/opt/nb", "/opt/nb", staging="notebook")),
    ],
)
def test_the_working_directory_never_covers_the_fake_home_or_system_folders(cwd, home, expected):
    assert workdir_mount(cwd, home) == expected


def test_request_checks_binds_and_image(tmp_path):
    image = tmp_path / "image"
    image.mkdir()
    settings = ContainerSettings(image=str(image), binds=[f"{tmp_path}:/data:ro"], gpu=True)
    request = build_request(
        settings, ["python3"], cwd=str(tmp_path), home=tmp_path / "h", host_env={}
    )
    assert Bind(str(tmp_path), "/data", read_only=True) in request.binds
    assert request.workdir == str(tmp_path)
    assert request.gpu
    missing = ContainerSettings(image=str(image), binds=[f"{tmp_path}/nope:/data"])
    with pytest.raises(ContainerKernelError, match="Bind source does not exist"):
        build_request(missing, ["python3"], cwd="/", home=None, host_env={})


def test_check_image():
    assert check_image("docker://python:3.12") == "docker://python:3.12"
    with pytest.raises(ContainerKernelError, match="No image"):
        check_image("")
    with pytest.raises(ContainerKernelError, match="Image not found"):
        check_image("/no/such.sif")

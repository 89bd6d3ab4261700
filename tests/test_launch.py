"""The launch layer's policy: what may enter, what is bound where, what is refused."""

from __future__ import annotations

import pytest

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.images.resolve import check_image
from container_kernel.launch.environment import container_environment
from container_kernel.launch.plan import (
    NOTEBOOK_MOUNT,
    PRIVATE_MOUNT,
    build_request,
    workdir_mount,
)
from container_kernel.launch.sessions import Session
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


@pytest.mark.parametrize("pattern", ["*", "JUPYTERHUB_*", "AWS_*", "*TOKEN*", "*_KEY"])
def test_a_glob_never_admits_a_secret(pattern):
    host = {**HOST, "JPY_API_TOKEN": "s", "GITHUB_TOKEN": "s", "MY_PASSWORD": "s", "AWS_X": "1"}
    env = container_environment(host, patterns=[pattern])
    for secret in ("JUPYTERHUB_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "JPY_API_TOKEN",
                   "GITHUB_TOKEN", "MY_PASSWORD"):  # fmt: skip
        assert secret not in env
    assert ("AWS_X" in env) == (pattern in ("*", "AWS_*"))


def test_secrets_enter_only_when_named_exactly():
    env = container_environment(HOST, patterns=["JUPYTERHUB_API_TOKEN", "OMP_*"])
    assert env["JUPYTERHUB_API_TOKEN"] == "secret"
    assert env["OMP_NUM_THREADS"] == "4"
    assert "AWS_SECRET_ACCESS_KEY" not in env


@pytest.mark.parametrize(
    ("cwd", "home", "expected"),
    [
        ("/work/nb", "/home/me", Bind("/work/nb", "/work/nb", staging="notebook")),
        # under the home: bound elsewhere, so no empty folders appear in the fake home
        ("/home/me/nb", "/home/me", Bind("/home/me/nb", NOTEBOOK_MOUNT, staging="notebook")),
        ("/home/me", "/home/me", Bind("/home/me", NOTEBOOK_MOUNT, staging="notebook")),
        ("/home", "/home/me", Bind("/home", NOTEBOOK_MOUNT, staging="notebook")),
        ("/home/me", None, Bind("/home/me", "/home/me", staging="notebook")),
        ("/", "/home/me", None),
        ("/opt", "/home/me", Bind("/opt", NOTEBOOK_MOUNT, staging="notebook")),
        ("/tmp", "/home/me", Bind("/tmp", NOTEBOOK_MOUNT, staging="notebook")),  # private /tmp
        ("/tmp/nb", "/home/me", Bind("/tmp/nb", "/tmp/nb", staging="notebook")),
        ("/opt/nb", "/home/me", Bind("/opt/nb", "/opt/nb", staging="notebook")),
    ],
)
def test_the_working_directory_never_covers_the_fake_home_or_system_folders(cwd, home, expected):
    assert workdir_mount(cwd, home) == expected


def test_request_checks_binds(tmp_path):
    image = tmp_path / "image"
    image.mkdir()
    (tmp_path / "sessions").mkdir()
    session = Session.create(tmp_path / "sessions")
    settings = ContainerSettings(image=str(image), binds=[f"{tmp_path}:/data:ro"], gpu=True)
    request = build_request(
        settings, ["python3"], cwd=str(tmp_path), home=tmp_path / "h", host_env={},
        session=session, image=str(image),
    )  # fmt: skip
    assert Bind(str(tmp_path), "/data", read_only=True) in request.binds
    assert request.workdir == str(tmp_path)
    assert request.gpu
    assert request.env["CONTAINER_KERNEL_SESSION"] == session.name
    assert (request.tmp, request.var_tmp) == (str(session.tmp), str(session.var_tmp))
    assert request.private == Bind(str(session.tmp), "/tmp")
    shared = ContainerSettings(image=str(image), share_tmp=True)
    request = build_request(
        shared, ["x"], cwd="/", home=None, host_env={}, session=session, image=str(image)
    )
    assert request.tmp is None
    private = Bind(str(session.folder / "private"), PRIVATE_MOUNT, staging="private")
    assert request.private == private
    assert request.private in request.binds
    missing = ContainerSettings(image=str(image), binds=[f"{tmp_path}/nope:/data"])
    with pytest.raises(ContainerKernelError, match="Bind source does not exist"):
        build_request(
            missing, ["python3"], cwd="/", home=None, host_env={}, session=session, image=str(image)
        )


def test_check_image():
    assert check_image("docker://python:3.12") == "docker://python:3.12"
    with pytest.raises(ContainerKernelError, match="No image"):
        check_image("")
    with pytest.raises(ContainerKernelError, match="Image not found"):
        check_image("/no/such.sif")


def test_a_bind_over_the_private_tmp_is_refused(tmp_path):
    image = tmp_path / "image"
    image.mkdir()
    (tmp_path / "sessions").mkdir()
    session = Session.create(tmp_path / "sessions")
    settings = ContainerSettings(image=str(image), binds=[f"{tmp_path}:/tmp"])
    with pytest.raises(ContainerKernelError, match=r"would cover the kernel's private /tmp"):
        build_request(
            settings, ["x"], cwd="/", home=None, host_env={}, session=session, image=str(image)
        )
    shared = ContainerSettings(image=str(image), binds=[f"{tmp_path}:/tmp"], share_tmp=True)
    request = build_request(
        shared, ["x"], cwd="/", home=None, host_env={}, session=session, image=str(image)
    )
    assert Bind(str(tmp_path), "/tmp") in request.binds

"""The exact argv and environment for each runtime flavour: pure functions, pinned."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.runtimes import Bind, ExecRequest, find_runtime, parse_bind
from container_kernel.runtimes.apptainer import ENV_FILE, Flavour, exec_command, parse_version

REQUEST = ExecRequest(
    image="/images/stack.sif",
    command=["python3", "-m", "ipykernel_launcher", "-f", "/rt/kernel-1.json"],
    env={"JPY_SESSION_NAME": "a.ipynb", "SAFE": '$(touch /tmp/x) `id` "q" \\ ,'},
    binds=[Bind("/rt", "/rt"), Bind("/data", "/data", read_only=True)],
    home=Bind("/fake/home", "/home/me"),
    workdir="/work/nb",
    extra_args=["--contain-nothing-special"],
    tmp="/s/tmp",
    var_tmp="/s/var_tmp",
    private=Bind("/s/tmp", "/tmp"),
)
HOST_ENV = {
    "PATH": "/usr/bin", "APPTAINERENV_LEAK": "x", "SINGULARITYENV_LEAK": "y", "USER": "me",
    "http_proxy": "http://user:pw@proxy:3128", "NO_PROXY": "localhost",
}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "name", "version"),
    [
        ("apptainer version 1.3.4\n", "apptainer", (1, 3, 4)),
        ("apptainer version 1.4.5-1.el9", "apptainer", (1, 4, 5)),
        ("singularity-ce version 4.1.0-jammy", "singularity-ce", (4, 1, 0)),
        ("singularity-ce version 3.8.0", "singularity-ce", (3, 8, 0)),
        ("singularity version 3.4.2", "singularity", (3, 4, 2)),
        ("2.6.1-dist", "singularity", (2, 6, 1)),
    ],
)
def test_parse_version(text, name, version):
    assert parse_version(text) == Flavour(name, version)


def test_parse_version_refuses_nonsense():
    with pytest.raises(ContainerKernelError, match="Cannot tell which"):
        parse_version("bash: apptainer: command not found")


def test_apptainer_argv_and_env():
    command = exec_command("apptainer", Flavour("apptainer", (1, 3, 4)), REQUEST, HOST_ENV)
    argv, env = command.argv, command.env
    assert argv == [
        "apptainer", "exec", "--cleanenv", "--no-eval",
        "--home", "/fake/home:/home/me",
        "--bind", "/s/tmp:/tmp", "--bind", "/s/var_tmp:/var/tmp",
        "--bind", "/rt:/rt", "--bind", "/data:/data:ro",
        "--pwd", "/work/nb",
        "--contain-nothing-special",
        "/images/stack.sif",
        "python3", "-m", "ipykernel_launcher", "-f", "/rt/kernel-1.json",
    ]  # fmt: skip
    assert env == {
        "PATH": "/usr/bin",
        "USER": "me",
        "APPTAINERENV_JPY_SESSION_NAME": "a.ipynb",
        "APPTAINERENV_SAFE": '$(touch /tmp/x) `id` "q" \\ ,',
    }  # no proxies: --cleanenv would keep them
    assert not command.files


def test_singularity_ce_310_uses_its_prefix_and_no_eval():
    command = exec_command("singularity", Flavour("singularity-ce", (3, 10, 0)), REQUEST, {})
    assert command.argv[:4] == ["singularity", "exec", "--cleanenv", "--no-eval"]
    assert command.env["SINGULARITYENV_SAFE"] == REQUEST.env["SAFE"]


@pytest.mark.parametrize(
    "flavour",
    [Flavour("apptainer", (1, 0, 2)), Flavour("singularity-ce", (3, 8, 0)),
     Flavour("singularity", (3, 4, 2)), Flavour("singularity", (2, 6, 1)),
     Flavour("singularity-ce", (3, 7, 4))],
)  # fmt: skip
def test_without_no_eval_values_go_through_a_file_sh_reads(flavour, tmp_path):
    command = exec_command("singularity", flavour, REQUEST, {"SINGULARITYENV_X": "leak"})
    assert "--no-eval" not in command.argv
    assert "--home" in command.argv  # -B over $HOME is refused by 2.6; --home works everywhere
    assert command.env == {}  # no value where the runtime would evaluate it
    image_at = command.argv.index("/images/stack.sif")
    assert command.argv[image_at + 1 :] == [
        "/bin/sh", "-c", '. "$1"; shift; exec "$@"', "sh", f"/tmp/{ENV_FILE}", *REQUEST.command
    ]  # fmt: skip
    (text,) = command.files.values()
    assert list(command.files) == [f"/s/tmp/{ENV_FILE}"]
    # sh reads it back byte for byte, evaluating nothing
    env_file = tmp_path / "env.sh"
    env_file.write_text(text)
    out = subprocess.run(
        ["/bin/sh", "-c", '. "$1"; shift; exec "$@"', "sh", env_file, "env", "-0"],
        capture_output=True, env={}, check=True,
    ).stdout  # fmt: skip
    inside = dict(line.split("=", 1) for line in out.decode().split("\0") if "=" in line)
    assert inside["SAFE"] == REQUEST.env["SAFE"]
    assert inside["JPY_SESSION_NAME"] == "a.ipynb"
    assert not (tmp_path / "x").exists()


def test_paths_bind_cannot_express():
    notebook = Bind("/data, 2024", "/data, 2024", staging="notebook")
    request = ExecRequest(image="img", command=["x"], binds=[notebook], workdir="/data, 2024")
    argv = exec_command("apptainer", Flavour("apptainer", (1, 4, 5)), request, {}).argv
    assert "--bind" not in argv  # the runtime starts there and mounts its current folder itself
    assert argv[argv.index("--pwd") + 1] == "/data, 2024"
    for bind in (Bind("/a:b", "/x"), Bind("/data, 2024", "/d")):
        with pytest.raises(ContainerKernelError, match="',' or ':'"):
            exec_command("apptainer", Flavour("apptainer", (1, 4, 5)),
                         ExecRequest(image="img", command=["x"], binds=[bind]), {})  # fmt: skip


def test_no_home_and_gpu_and_keep_env():
    request = ExecRequest(image="img", command=["bash"], home=None, gpu=True, cleanenv=False)
    command = exec_command("apptainer", Flavour("apptainer", (1, 4, 5)), request, HOST_ENV)
    assert command.argv == ["apptainer", "exec", "--no-eval", "--no-home", "--nv", "img", "bash"]
    assert command.env == HOST_ENV  # without a clean environment, the host's own values stand


@pytest.mark.parametrize(
    ("spec", "bind"),
    [
        ("/data", Bind("/data", "/data")),
        ("/data:/in", Bind("/data", "/in")),
        ("/data:/in:ro", Bind("/data", "/in", read_only=True)),
        ("/data:/in:rw", Bind("/data", "/in")),
        ("~/x:/x", Bind("~/x", "/x")),
    ],
)
def test_parse_bind(spec, bind):
    assert parse_bind(spec) == bind


@pytest.mark.parametrize("spec", ["", "rel:/x", "/a:rel", "/a:/b:rx", "/a:/b:ro:x", "/a,/b"])
def test_parse_bind_refuses_malformed(spec):
    with pytest.raises(ContainerKernelError, match="Malformed bind"):
        parse_bind(spec)


def _fake_runtime(folder, name, version_text):
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{version_text}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_auto_prefers_apptainer_then_singularity(tmp_path, monkeypatch):
    _fake_runtime(tmp_path, "singularity", "singularity-ce version 4.1.0")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert str(find_runtime()) == f"singularity-ce 4.1.0 ({tmp_path}/singularity)"
    _fake_runtime(tmp_path, "apptainer", "apptainer version 1.3.4")
    assert find_runtime().flavour == Flavour("apptainer", (1, 3, 4))


def test_runtime_path_and_missing_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ContainerKernelError, match="No container runtime found"):
        find_runtime()
    legacy = _fake_runtime(tmp_path / ".." / tmp_path.name, "singularity-2.6", "2.6.1-dist")
    runtime = find_runtime("singularity", str(legacy))
    assert runtime.flavour == Flavour("singularity", (2, 6, 1))
    with pytest.raises(ContainerKernelError, match="not an executable"):
        find_runtime("apptainer", os.fspath(tmp_path / "nope"))

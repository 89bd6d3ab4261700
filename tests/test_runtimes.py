"""The exact argv and environment for each runtime flavour: pure functions, pinned."""

from __future__ import annotations

import os
import stat

import pytest

from container_kernel.errors import ContainerKernelError
from container_kernel.runtimes import Bind, ExecRequest, find_runtime, parse_bind
from container_kernel.runtimes.apptainer import Flavour, exec_command, parse_version

REQUEST = ExecRequest(
    image="/images/stack.sif",
    command=["python3", "-m", "ipykernel_launcher", "-f", "/rt/kernel-1.json"],
    env={"JPY_SESSION_NAME": "a.ipynb", "SAFE": '$(touch /tmp/x) `id` "q" \\ ,'},
    binds=[Bind("/rt", "/rt"), Bind("/data", "/data", read_only=True)],
    home=Bind("/fake/home", "/home/me"),
    workdir="/work/nb",
    extra_args=["--contain-nothing-special"],
)
HOST_ENV = {"PATH": "/usr/bin", "APPTAINERENV_LEAK": "x", "SINGULARITYENV_LEAK": "y", "USER": "me"}


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
    argv, env = exec_command("apptainer", Flavour("apptainer", (1, 3, 4)), REQUEST, HOST_ENV)
    assert argv == [
        "apptainer", "exec", "--cleanenv", "--no-eval",
        "--home", "/fake/home:/home/me",
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
    }


def test_singularity_ce_310_uses_its_prefix_and_no_eval():
    argv, env = exec_command("singularity", Flavour("singularity-ce", (3, 10, 0)), REQUEST, {})
    assert argv[:4] == ["singularity", "exec", "--cleanenv", "--no-eval"]
    assert env["SINGULARITYENV_SAFE"] == REQUEST.env["SAFE"]


@pytest.mark.parametrize(
    "flavour",
    [Flavour("apptainer", (1, 0, 2)), Flavour("singularity-ce", (3, 8, 0)),
     Flavour("singularity", (3, 8, 7))],
)  # fmt: skip
def test_one_round_of_evaluation_is_escaped(flavour):
    argv, env = exec_command("singularity", flavour, REQUEST, {})
    assert "--no-eval" not in argv
    assert env[flavour.env_prefix + "SAFE"] == '\\$(touch /tmp/x) \\`id\\` \\"q\\" \\\\ ,'


@pytest.mark.parametrize(
    "flavour",
    [Flavour("singularity", (3, 4, 2)), Flavour("singularity", (2, 6, 1)),
     Flavour("singularity-ce", (3, 7, 4))],
)  # fmt: skip
def test_older_runtimes_take_only_values_that_arrive_unchanged(flavour):
    with pytest.raises(ContainerKernelError, match="would evaluate SAFE="):
        exec_command("singularity", flavour, REQUEST, {})
    request = ExecRequest(
        image="img",
        command=["python3"],
        env={"OMP_NUM_THREADS": "4", "DATA": "/scratch/x-1.2", "JPY_SESSION_NAME": "My nb.ipynb"},
        home=Bind("/fake", "/root"),
    )
    argv, env = exec_command("singularity", flavour, request, {})
    assert "--home" in argv  # -B over $HOME is refused by 2.6; --home works everywhere
    prefix = flavour.env_prefix
    assert env == {prefix + "OMP_NUM_THREADS": "4", prefix + "DATA": "/scratch/x-1.2"}


def test_paths_bind_cannot_express():
    notebook = Bind("/data, 2024", "/data, 2024", staging="notebook")
    request = ExecRequest(image="img", command=["x"], binds=[notebook], workdir="/data, 2024")
    argv, _ = exec_command("apptainer", Flavour("apptainer", (1, 4, 5)), request, {})
    assert "--bind" not in argv  # the runtime starts there and mounts its current folder itself
    assert argv[argv.index("--pwd") + 1] == "/data, 2024"
    for bind in (Bind("/a:b", "/x"), Bind("/data, 2024", "/d")):
        with pytest.raises(ContainerKernelError, match="',' or ':'"):
            exec_command("apptainer", Flavour("apptainer", (1, 4, 5)),
                         ExecRequest(image="img", command=["x"], binds=[bind]), {})  # fmt: skip


def test_no_home_and_gpu_and_keep_env():
    request = ExecRequest(image="img", command=["bash"], home=None, gpu=True, cleanenv=False)
    argv, env = exec_command("apptainer", Flavour("apptainer", (1, 4, 5)), request, HOST_ENV)
    assert argv == ["apptainer", "exec", "--no-eval", "--no-home", "--nv", "img", "bash"]
    assert env == HOST_ENV  # without a clean environment, the host's own prefixed values stand


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

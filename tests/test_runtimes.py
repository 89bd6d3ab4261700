"""The exact argv and environment for each runtime flavour: pure functions, pinned; and the
runtime contract (base.Runtime) and its registry."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from importlib.metadata import entry_points

import pytest
from traitlets import TraitError

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.images.cache import ImageCache, local_image
from container_kernel.runtimes import (
    Bind,
    Command,
    ExecRequest,
    Fact,
    Runtime,
    find_runtime,
    names,
    parse_bind,
    runtime_class,
)
from container_kernel.runtimes.apptainer import (
    ENV_FILE,
    Apptainer,
    Flavour,
    Singularity,
    exec_command,
    parse_version,
    pull_env,
)
from container_kernel.runtimes.names import BUILT_IN, GROUP, SettingValues
from container_kernel.settings import ContainerSettings

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
    assert type(runtime) is Singularity  # Apptainer's backend under the setting's name
    assert (runtime.name, runtime.cache_kind, runtime.forwards_signals) == ("singularity", "sif",
                                                                            False)  # fmt: skip
    assert type(find_runtime("auto", str(legacy))) is Apptainer  # a renamed one, most likely
    with pytest.raises(ContainerKernelError, match="not an executable"):
        find_runtime("apptainer", os.fspath(tmp_path / "nope"))


def test_the_version_is_asked_once_per_binary(tmp_path, monkeypatch):
    asked = tmp_path / "asked"
    path = _fake_runtime(tmp_path, "apptainer", "apptainer version 1.3.4")
    path.write_text(f"#!/bin/sh\necho >> {asked}\necho 'apptainer version 1.3.4'\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_runtime() == find_runtime("apptainer") == Apptainer(str(path), Flavour(
        "apptainer", (1, 3, 4)))  # fmt: skip
    assert len(asked.read_text()) == 1
    later = path.stat().st_mtime_ns + 10**9  # the binary changed (an upgrade): asked again
    os.utime(path, ns=(later, later))
    find_runtime()
    assert len(asked.read_text()) == 2


def test_the_built_in_runtimes_are_registered_by_entry_point():
    declared = {entry.name: entry.value for entry in entry_points(group=GROUP)}
    assert {name: declared.get(name) for name in BUILT_IN} == BUILT_IN  # pyproject.toml's
    assert names()[:3] == ("apptainer", "singularity", "charliecloud")
    assert [runtime_class(name).name for name in BUILT_IN] == list(BUILT_IN)


def test_an_unknown_runtime_is_one_line_naming_the_installed_ones():
    with pytest.raises(ContainerKernelError) as raised:
        find_runtime("podman", "/bin/sh")
    assert str(raised.value).startswith(
        "Unknown runtime 'podman': installed runtimes are apptainer, singularity, charliecloud"
    )
    assert "\n" not in str(raised.value)


def test_the_setting_takes_the_registered_names_in_any_case():
    assert list(SettingValues())[:4] == ["auto", "apptainer", "singularity", "charliecloud"]
    assert "charliecloud" in SettingValues()
    assert "podman" not in SettingValues()
    assert ContainerSettings(runtime="Apptainer", site=False).runtime == "apptainer"
    with pytest.raises(TraitError, match=r"expected any of \['auto', 'apptainer', "):
        ContainerSettings(runtime="podman", site=False)


class Echo(Runtime):
    """The least a runtime is: the abstract members, nothing else."""

    name = "echo"
    executables = ("echo-runtime",)

    @classmethod
    def parse_version(cls, text: str) -> str:
        return text.strip()

    def exec_command(self, request, host_env) -> Command:
        return Command([self.executable, request.image, *request.command], dict(host_env))

    @property
    def forwards_signals(self) -> bool:
        return False

    @property
    def mounts_in_private_tmp(self) -> bool:
        return True


def test_a_runtime_is_its_abstract_members_the_rest_has_defaults(tmp_path):
    with pytest.raises(TypeError, match="abstract"):
        Runtime("/bin/true", "x")  # type: ignore[abstract]
    echo = Echo.detect(str(_fake_runtime(tmp_path, "echo-runtime", "echo 1.0")))
    assert str(echo) == f"echo 1.0 ({tmp_path}/echo-runtime)"
    assert echo.exec_command(ExecRequest("img", ["true"]), {"A": "1"}) == Command(
        [f"{tmp_path}/echo-runtime", "img", "true"], {"A": "1"})  # fmt: skip
    assert echo.doctor("img", None, "none") == []
    assert Echo.clean(ImageCache(tmp_path), set(), lambda path: 1, print) == 0
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(ContainerKernelError, match=r"^echo cannot pull registry images \(docker"):
        local_image("docker://host/x:1", echo, cache)
    assert not cache.root.exists()


def test_apptainer_keeps_its_pull_cache_and_temporary_files_in_the_store(tmp_path):
    cache, tmp = f"{tmp_path}/apptainer", f"{tmp_path}/tmp"
    assert pull_env(tmp_path) == {"APPTAINER_CACHEDIR": cache, "SINGULARITY_CACHEDIR": cache,
                                  "APPTAINER_TMPDIR": tmp, "SINGULARITY_TMPDIR": tmp}  # fmt: skip
    for folder in ("apptainer", "tmp"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o700
    assert Apptainer.cache_folders == ("apptainer", "tmp")


def test_apptainer_cleans_what_no_record_names_but_a_pull_under_way(tmp_path):
    sif = tmp_path / "sif"
    sif.mkdir()
    named, old, ours, dead, fresh = (sif / name for name in (
        "a-1.sif", "a-0.sif", f".b.sif.{os.getpid()}.partial", ".c.sif.999999999.partial",
        "tmp-copy-1",
    ))  # fmt: skip
    for path in (named, old, ours, dead, fresh):
        path.write_text("x")
    removed = []
    freed = Apptainer.clean(ImageCache(tmp_path), {named}, lambda p: removed.append(p) or 5, print)
    assert (sorted(removed), freed) == (sorted([old, dead]), 10)
    stale = time.time() - 7200  # the runtime's own temporary files: after an hour
    os.utime(fresh, (stale, stale))
    assert Apptainer.clean(ImageCache(tmp_path), {named}, lambda p: 1, print) == 3


@pytest.mark.parametrize(
    ("flavour", "no_eval"),
    [
        (Flavour("apptainer", (1, 4, 5)), "yes, values go in literally (--no-eval)"),
        (Flavour("singularity", (2, 6, 1)),
         "not in singularity 2.6.1: values go in from a file /bin/sh reads inside"),
    ],
)  # fmt: skip
def test_apptainer_tells_check_how_values_go_in(flavour, no_eval):
    assert Apptainer("apptainer", flavour).doctor("x.sif", "nvidia", "auto") == [
        Fact(True, "no-eval", no_eval),
        Fact(True, "GPUs", "auto (NVIDIA with --nv, AMD with --rocm, auto: this machine's)"),
    ]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("import no_such_module", r"^Cannot load the runtime 'odd' \(ck_odd:Odd\): "
                                  r"ModuleNotFoundError: No module named 'no_such_module'$"),
        ("Odd = dict", r"^The runtime 'odd' \(ck_odd:Odd\) is not a container_kernel Runtime "),
        ("from container_kernel.runtimes.charliecloud import Charliecloud as Odd",
         r"^The runtime 'odd' \(ck_odd:Odd\) calls itself 'charliecloud': set its `name`.$"),
    ],
    ids=["import-error", "not-a-runtime", "misnamed"],
)  # fmt: skip
def test_a_registered_runtime_that_cannot_be_used_says_why_in_one_line(
    tmp_path, monkeypatch, code, error
):
    """Another package's runtime is loaded when named (listing names loads nothing)."""
    (tmp_path / "ck_odd.py").write_text(code + "\n")
    info = tmp_path / "ck_odd-1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ck-odd\nVersion: 1\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\nodd = ck_odd:Odd\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert names()[-1] == "odd"
    assert "odd" in SettingValues()
    try:
        with pytest.raises(ContainerKernelError, match=error):
            find_runtime("odd")
    finally:
        sys.modules.pop("ck_odd", None)  # (each case writes a module of that name)

"""ch-run's argv, pinned: clean environment, literal values, binds it can mount, staging."""

from __future__ import annotations

import os
import shutil

import pytest

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.images.cache import ImageCache
from container_kernel.runtimes.base import Bind, ExecRequest, Fact
from container_kernel.runtimes.charliecloud import (
    Charliecloud,
    Flavour,
    exec_command,
    parse_version,
)

FLAVOUR = Flavour((0, 31, 0))


@pytest.fixture
def image(tmp_path):
    root = tmp_path / "image"
    for folder in ("root", "usr/bin", "tmp"):
        (root / folder).mkdir(parents=True)
    return root


def test_parse_version():
    assert parse_version("0.31\n") == FLAVOUR
    with pytest.raises(ContainerKernelError, match="Cannot tell which Charliecloud"):
        parse_version("ch-run: error: $USER not set")


def test_argv_clean_env_literal_values_and_binds(image, tmp_path):
    home = tmp_path / "fake-home"
    (home / ".local/share/jupyter/runtime").mkdir(parents=True)
    private = tmp_path / "session"
    request = ExecRequest(
        image=str(image),
        command=["python3", "-f", "/root/.local/share/jupyter/runtime/k.json"],
        env={"A": "$(id) $HOME", "Q": "'single'", "E": ""},
        home=Bind(str(home), "/root", staging="home"),
        binds=[Bind("/host/rt", "/root/.local/share/jupyter/runtime", staging="connection")],
        workdir="/tmp/nb",
        tmp=f"{private}/tmp",
        host_private=str(private),
    )
    command = exec_command("ch-run", FLAVOUR, request, {"PATH": "/bin"})
    assert command.argv == [
        "ch-run", "--unset-env=*", "--env-no-expand", f"--set-env={private}/ch-run.env",
        "-b", f"{private}/tmp:/tmp",
        "-b", f"{home}:/root", "-b", "/host/rt:/root/.local/share/jupyter/runtime",
        "-c", "/tmp/nb", str(image), "--",
        "python3", "-f", "/root/.local/share/jupyter/runtime/k.json",
    ]  # fmt: skip
    # values in a file (not in argv, where ps shows them), each in the quotes ch-run strips
    assert command.files == {
        f"{private}/ch-run.env": (
            "PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'\n"
            "HOME='/root'\nA='$(id) $HOME'\nQ=''single''\nE=''\n"
        )
    }
    assert command.env["USER"]  # ch-run refuses to start without it
    assert command.env["PATH"] == "/bin"


def test_a_newline_cannot_go_through_chrun(image, tmp_path):
    request = ExecRequest(
        image=str(image), command=["x"], env={"A": "one\ntwo"}, host_private=str(tmp_path)
    )
    with pytest.raises(ContainerKernelError, match="ch-run cannot pass 'A': its value holds a"):
        exec_command("ch-run", FLAVOUR, request, {})


def test_folders_it_cannot_create_are_staged_and_the_command_follows(image, tmp_path, monkeypatch):
    request = ExecRequest(
        image=str(image),
        command=["python3", "-f", "/home/me/.jupyter/rt/k.json"],
        home=Bind("/host/fake", "/home/me", staging="home"),  # /home is not in the image
        binds=[Bind("/host/rt", "/home/me/.jupyter/rt", staging="connection")],
        workdir="/home/me",
        host_private=str(tmp_path),
    )
    command = exec_command("ch-run", FLAVOUR, request, {"TMPDIR": str(tmp_path)})
    argv = command.argv
    # in the container: the host's $TMPDIR, a folder of this session's (named as its folder)
    stage = f"/tmp/.container-kernel-{os.getuid()}/{tmp_path.name}"
    assert f"HOME='{stage}/home'\n" in "".join(command.files.values())
    assert argv[argv.index("-c") + 1] == f"{stage}/home"
    assert argv[-1] == f"{stage}/connection/k.json"
    assert f"/host/rt:{stage}/connection" in argv
    on_host = tmp_path / f".container-kernel-{os.getuid()}" / tmp_path.name
    assert (on_host / "home").is_dir()
    assert command.created == [str(on_host)]  # the session removes it when it ends


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ExecRequest(image="IMG", command=["x"], gpu=True), "no GPU flag"),
        (ExecRequest(image="IMG", command=["x"], binds=[Bind("/d", "/d", True)]), "read-only"),
        (
            ExecRequest(image="IMG", command=["x"], binds=[Bind("/d", "/not/in/image")]),
            "cannot create /not/in/image",
        ),
        (ExecRequest(image="FILE", command=["x"]), "directory or SquashFS images"),
    ],
)
def test_what_ch_run_cannot_do_is_said_at_start(image, tmp_path, request_, message):
    sif = tmp_path / "image.sif"
    sif.write_bytes(b"")
    path = {"IMG": str(image), "FILE": str(sif)}[request_.image]
    with pytest.raises(ContainerKernelError, match=message):
        exec_command("ch-run", FLAVOUR, ExecRequest(**{**request_.__dict__, "image": path}), {})


def test_squashfs_image_stages_our_folders_and_trusts_user_binds(tmp_path):
    sqfs = tmp_path / "image.sqfs"
    sqfs.write_bytes(b"hsqs" + bytes(100))
    request = ExecRequest(
        image=str(sqfs),
        command=["python3"],
        home=Bind("/host/fake", "/root", staging="home"),
        binds=[Bind("/scratch", "/scratch")],
        host_private=str(tmp_path),
    )
    command = exec_command("ch-run", FLAVOUR, request, {"TMPDIR": str(tmp_path)})
    assert (
        f"HOME='/tmp/.container-kernel-{os.getuid()}/{tmp_path.name}/home'\n"
        in command.files[f"{tmp_path}/ch-run.env"]
    )
    assert "/scratch:/scratch" in command.argv


def test_staging_folder_must_be_ours_and_private(image, tmp_path, monkeypatch):
    stage = tmp_path / f".container-kernel-{os.getuid()}"
    home = Bind("/h", "/home/me", staging="home")
    request = ExecRequest(image=str(image), command=["x"], home=home, host_private=str(tmp_path))
    stage.mkdir()
    stage.chmod(0o755)
    exec_command("ch-run", FLAVOUR, request, {"TMPDIR": str(tmp_path)})
    assert stage.stat().st_mode & 0o777 == 0o700
    shutil.rmtree(stage)
    stage.symlink_to(tmp_path)  # as if another user had planted it first
    with pytest.raises(ContainerKernelError, match="is not a folder of yours"):
        exec_command("ch-run", FLAVOUR, request, {"TMPDIR": str(tmp_path)})


def test_uri_images_are_refused_with_what_to_do():
    with pytest.raises(ContainerKernelError, match="ch-run runs local images, not docker://x"):
        exec_command("ch-run", FLAVOUR, ExecRequest(image="docker://x", command=["x"]), {})


def test_folders_go_at_their_own_path_over_an_empty_folder_of_the_image(image, tmp_path):
    (image / "home").mkdir()  # empty, as in most images: covering it hides nothing
    (image / "scratch").mkdir()
    (image / "etc").mkdir()
    (image / "etc" / "passwd").write_text("")
    private = tmp_path / "session"
    (tmp_path / "tmp").mkdir()
    request = ExecRequest(
        image=str(image),
        command=["python3", "/scratch/me/project/run.py"],
        home=Bind("/host/fake", "/home/me", staging="home"),
        binds=[Bind("/host/project", "/scratch/me/project", staging="notebook"),
               Bind("/host/conf", "/etc/app", staging="notebook")],  # /etc is not empty
        workdir="/scratch/me/project",
        host_private=str(private),
        tmp=str(tmp_path / "tmp"),
    )  # fmt: skip
    command = exec_command("ch-run", FLAVOUR, request, {})
    binds = [command.argv[i + 1] for i, a in enumerate(command.argv) if a == "-b"]
    skeletons = private / "skeleton"
    assert binds[:6] == [
        f"{tmp_path / 'tmp'}:/tmp",
        f"{skeletons / 'home'}:/home",
        "/host/fake:/home/me",
        f"{skeletons / 'scratch'}:/scratch",
        "/host/project:/scratch/me/project",
        f"/host/conf:/tmp/.container-kernel-{os.getuid()}/session/notebook",  # /etc: not empty
    ]
    assert (skeletons / "home" / "me").is_dir()
    assert (skeletons / "scratch" / "me" / "project").is_dir()
    assert command.argv[command.argv.index("-c") + 1] == "/scratch/me/project"
    assert command.argv[-1] == "/scratch/me/project/run.py"
    assert "HOME='/home/me'\n" in "".join(command.files.values())


def test_a_folder_with_a_colon_is_refused_naming_it(image, tmp_path):
    request = ExecRequest(
        image=str(image), command=["x"], binds=[Bind("/data/a:b", "/data/a:b", staging="notebook")],
        host_private=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(ContainerKernelError, match=r"^ch-run cannot bind the notebook's folder /d"):
        exec_command("ch-run", FLAVOUR, request, {})


def test_the_runtime_class_is_ch_run():
    runtime = Charliecloud("/usr/bin/ch-run", FLAVOUR)
    assert str(runtime) == "charliecloud 0.31.0 (/usr/bin/ch-run)"
    assert (runtime.name, runtime.executables, runtime.cache_kind) == (
        "charliecloud", ("ch-run",), "ch-image")  # fmt: skip
    assert (runtime.forwards_signals, runtime.mounts_in_private_tmp) == (False, True)
    assert Charliecloud.parse_version("0.31\n") == FLAVOUR


def test_check_says_how_values_go_in_and_which_gpus_it_gives(image):
    runtime = Charliecloud("ch-run", FLAVOUR)
    values = Fact(True, "no-eval", "values go in from a file, with --env-no-expand")
    assert runtime.doctor(str(image), None, "none") == [values, Fact(
        True, "GPUs", "none (NVIDIA: an image prepared once with `ch-fromhost --nvidia IMAGE`)"
    )]  # fmt: skip
    (no_amd,) = [fact for fact in runtime.doctor(str(image), "amd", "amd") if not fact.ok]
    assert no_amd.detail.startswith("ch-run cannot give AMD GPUs")
    (unprepared,) = [fact for fact in runtime.doctor(str(image), "nvidia", "auto") if not fact.ok]
    assert unprepared.detail.startswith(f"ch-run has no GPU flag and {image} lacks the host's")


def test_clean_frees_unnamed_images_with_the_storage_locked(tmp_path):
    storage = tmp_path / "ch-image" / "img"
    named, old = storage / "ck-a-1", storage / "ck-a-0"
    for folder in (named, old):
        folder.mkdir(parents=True)
    said = []
    freed = Charliecloud.clean(ImageCache(tmp_path), {named}, lambda path: 7, said.append)
    assert freed == 7
    assert said == []  # nobody held the lock
    assert (tmp_path / "locks" / "ch-image-storage.lock").exists()

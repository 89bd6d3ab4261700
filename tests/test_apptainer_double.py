"""Tests of the apptainer test double itself (tests/apptainer_double/apptainer) against the
semantics in the reference notes: environment, home, binds, cwd, errors, exit codes and signals,
for a sandbox directory and a SIF file alike; single-file images (SIF, SquashFS) and how they
are mounted and cleaned up; `apptainer pull` and `exec docker://` against the tests' real
registry (tests/registry.py): the SIF it makes, its cache, its messages and exit codes."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from registry import parse_requests

DOUBLE_DIR = Path(__file__).resolve().parent / "apptainer_double"
_spec = importlib.util.spec_from_file_location("double_sif", DOUBLE_DIR / "sif.py")
sif = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sif)


def fuse_mounts_work() -> bool:
    """Whether squashfuse can mount here: as root, or with /dev/fuse and fusermount3 usable."""
    if not (shutil.which("squashfuse_ll") or shutil.which("squashfuse")):
        return False
    return os.getuid() == 0 or (
        os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None
    )


needs_fuse = pytest.mark.skipif(
    not fuse_mounts_work(), reason="squashfuse cannot mount here (no /dev/fuse access)"
)


@pytest.fixture(scope="session")
def sif_image(squashfs_image, tmp_path_factory) -> Path:
    """The test image as a SIF file: its SquashFS wrapped by the double's SIF writer."""
    path = tmp_path_factory.mktemp("sif") / "bookworm-ipykernel.sif"
    with squashfs_image.open("rb") as data, path.open("wb") as out:
        sif.write(out, b"bootstrap: localimage\nfrom: test\n\n", {}, data, "amd64")
    return path


@pytest.fixture(params=["sandbox", pytest.param("sif", marks=needs_fuse)])
def exec_image(request, image) -> Path:
    """The image every `run` test runs: the sandbox directory, then the same as a SIF file."""
    return image if request.param == "sandbox" else request.getfixturevalue("sif_image")


@pytest.fixture
def run(apptainer_double, exec_image):
    """run(*exec_options, command..., env=None): `apptainer exec OPTIONS IMAGE COMMAND`."""

    def _run(*args, options=(), env=None):
        argv = [str(apptainer_double), "exec", *options, str(exec_image), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=60, check=False
        )

    return _run


def inside_env(result) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_version(apptainer_double, monkeypatch):
    out = subprocess.run(
        [apptainer_double, "--version"], capture_output=True, text=True, check=False
    )
    assert out.stdout == "apptainer version 1.4.5\n"
    monkeypatch.setenv("APPTAINER_DOUBLE_VERSION", "apptainer version 1.3.4")
    out = subprocess.run(
        [apptainer_double, "--version"], capture_output=True, text=True, check=False
    )
    assert out.stdout == "apptainer version 1.3.4\n"


def test_cleanenv_keeps_only_the_always_passed_set(run, monkeypatch):
    monkeypatch.setenv("DOUBLE_SENTINEL", "1")
    monkeypatch.setenv("PYTHONSTARTUP", "/x.py")
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = inside_env(run("env", options=["--cleanenv"]))
    assert set(env) == {
        "HOME",
        "LANG",
        "PATH",
        "PWD",
        "TERM",
        "PS1",
        "PROMPT_COMMAND",
        "http_proxy",
        "APPTAINER_COMMAND",
        *(
            p + k
            for p in ("APPTAINER_", "SINGULARITY_")
            for k in ("APPNAME", "BIND", "CONTAINER", "ENVIRONMENT", "NAME")
        ),
    }
    assert (env["LANG"], env["HOME"], env["TERM"]) == (
        "C",
        pwd.getpwuid(os.getuid()).pw_dir,
        "xterm",
    )


def test_host_environment_passes_without_cleanenv(run, monkeypatch):
    monkeypatch.setenv("DOUBLE_SENTINEL", "1")
    monkeypatch.setenv("PYTHONSTARTUP", "/x.py")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/host/lib")
    monkeypatch.setenv("APPTAINER_SOMETHING", "x")
    env = inside_env(run("env"))
    assert (env["DOUBLE_SENTINEL"], env["PYTHONSTARTUP"]) == ("1", "/x.py")
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert not {"LD_LIBRARY_PATH", "APPTAINER_SOMETHING"} & set(env)


def test_injected_values_are_evaluated_once(run, monkeypatch):
    monkeypatch.setenv("APPTAINERENV_A", "$(echo evaluated)")
    monkeypatch.setenv("SINGULARITYENV_A", "loses")
    monkeypatch.setenv("SINGULARITYENV_S", "legacy")
    result = run("env", options=["-e", "--env", "B=$(echo evaluated),C=2"])
    env = inside_env(result)
    assert (env["A"], env["B"], env["C"], env["S"]) == ("evaluated", "evaluated", "2", "legacy")
    assert (
        "SINGULARITYENV_A and APPTAINERENV_A have different values, using the latter"
        in result.stderr
    )


def test_no_eval_passes_values_literally(run, monkeypatch):
    value = "$(touch /tmp/x) a, B=1 \"q\" 'x' ünï"
    monkeypatch.setenv("APPTAINERENV_K", value)
    env = inside_env(run("env", options=["-e", "--no-eval", "--env=D=$(echo x)"]))
    assert (env["K"], env["D"]) == (value, "$(echo x)")


def test_env_with_bare_quote_is_a_flag_error(run):
    result = run("true", options=["--env", 'K=a "b"'])
    assert (result.returncode, 'bare " in non-quoted-field' in result.stderr) == (1, True)


def test_apptainerenv_home_is_refused(run, monkeypatch):
    monkeypatch.setenv("APPTAINERENV_HOME", "/x")
    result = run("sh", "-c", 'echo "$HOME"')
    assert (result.returncode, result.stdout.strip()) == (0, pwd.getpwuid(os.getuid()).pw_dir)
    assert (
        "WARNING: Overriding HOME environment variable with APPTAINERENV_HOME is not permitted"
        in result.stderr
    )


def test_custom_home_is_bound_and_hides_the_real_one(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a clone under /root would be bound there as the cwd
    result = run(
        "sh",
        "-c",
        'cd && touch written && echo "$HOME" && ls -A /root',
        options=["--home", f"{tmp_path}:/root"],
    )
    assert result.stdout.split() == ["/root", "written"]
    assert (tmp_path / "written").exists()


def test_missing_home_source_gives_an_empty_home_that_vanishes(run, tmp_path):
    missing = tmp_path / "missing"
    script = 'ls -A "$HOME"; echo x > "$HOME/f" && cat "$HOME/f"'
    first = run("sh", "-c", script, options=["-H", f"{missing}:/home/fake"])
    second = run("sh", "-c", script, options=["-H", f"{missing}:/home/fake"])
    assert (first.stdout, second.stdout, first.returncode) == ("x\n", "x\n", 0)
    assert not missing.exists()


def test_binds_read_only_and_read_write(run, tmp_path):
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    script = "touch /data/rw/a && ! touch /data2/b 2>/dev/null && touch /newdir/c && echo ok"
    result = run(
        "sh",
        "-c",
        script,
        options=[
            "-B",
            f"{tmp_path / 'ro'}:/data2:ro,{tmp_path / 'rw'}:/data/rw",
            "--bind",
            f"{tmp_path}:/newdir",
        ],
    )
    assert result.stdout == "ok\n", result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "c", "ro", "rw"]


def test_bind_to_a_new_path_under_an_image_dir_leaves_the_image_alone(run, image, tmp_path):
    (tmp_path / "file").write_text("content")
    result = run(
        "cat",
        "/etc/new-file",
        "/etc/hostname",
        options=["-B", f"{tmp_path / 'file'}:/etc/new-file"],
    )
    assert (result.stdout[:7], result.returncode) == ("content", 0)
    assert not (image / "etc" / "new-file").exists()


def test_missing_bind_source_is_fatal(run, tmp_path):
    src = tmp_path / "nope"
    result = run("true", options=["-B", f"{src}:/dst"])
    assert result.returncode == 255
    assert result.stderr == (
        f"WARNING: skipping mount of {src}: stat {src}: no such file or directory\n"
        f"FATAL:   container creation failed: mount hook function failure: "
        f"mount {src}->/dst error: while mounting {src}: mount source {src} doesn't exist\n"
    )


def test_relative_bind_destination_is_fatal(run):
    result = run("true", options=["-B", "/tmp:rel"])
    assert (result.returncode, result.stderr) == (
        255,
        "FATAL:   container creation failed: unable to add "
        "/tmp to mount list: destination must be an absolute path\n",
    )


def test_working_directory(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("pwd").stdout == f"{tmp_path}\n"
    assert run("pwd", options=["--pwd", "/usr/share"]).stdout == "/usr/share\n"
    bad = run("pwd", options=["--pwd", "/nonexist"])
    assert (bad.returncode, bad.stderr) == (
        255,
        "FATAL:   failed to set working directory: chdir /nonexist: no such file or directory\n",
    )


def test_cwd_outside_tmp_is_bound(run, apptainer_double, image):
    cwd = Path(__file__).parent  # /work/main/tests: not in the image
    out = subprocess.run(
        [apptainer_double, "exec", image, "ls", "conftest.py"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout == "conftest.py\n"


def test_missing_image_and_sif_file(apptainer_double, tmp_path):
    missing = tmp_path / "x.sif"
    out = subprocess.run(
        [apptainer_double, "exec", missing, "true"], capture_output=True, text=True, check=False
    )
    assert (out.returncode, out.stderr) == (
        255,
        f"FATAL:   While checking container encryption: could not open "
        f"image {missing}: failed to retrieve path for {missing}: lstat "
        f"{missing}: no such file or directory\n",
    )
    missing.write_bytes(b"SIF")
    out = subprocess.run(
        [apptainer_double, "exec", missing, "true"], capture_output=True, text=True, check=False
    )
    assert (out.returncode, out.stderr) == (
        255,
        f"FATAL:   While checking container encryption: could not open image {missing}: "
        "image format not recognized\n",
    )


def test_missing_command(run):
    result = run("nosuchcmd")
    assert (result.returncode, result.stderr) == (
        255,
        'FATAL:   "nosuchcmd": executable file not found in $PATH\n',
    )


def test_unknown_flag_is_a_cobra_error(run):
    result = run("true", options=["--bogus"])
    assert result.returncode == 1
    assert result.stderr.startswith('Error for command "exec": unknown flag: --bogus\n')


def test_exit_status_and_signal_are_propagated(run):
    assert run("sh", "-c", "exit 7").returncode == 7
    assert run("sh", "-c", "kill -TERM $$").returncode == -signal.SIGTERM
    assert run("sh", "-c", "kill -KILL $$").returncode == -signal.SIGKILL


def test_gpu_flags_warn_and_go_on(run):
    result = run("true", options=["--nv"])
    assert (result.returncode, result.stderr) == (
        0,
        "WARNING: Could not find any nv files on this host!\n",
    )


INTERRUPT_LOOP = """
import time
count, end, ready = 0, None, False
while end is None or time.time() < end:
    try:  # "ready" is printed inside the try: a signal may land before print returns
        if not ready:
            ready = True
            print("ready", flush=True)
        time.sleep(0.02)
    except KeyboardInterrupt:
        count += 1
        end = end or time.time() + 1.0
print(count, flush=True)
"""


def start(apptainer_double, image, *command):
    """Started directly (not by a background shell, which would ignore SIGINT), in its own group."""
    return subprocess.Popen(
        [apptainer_double, "exec", image, *command],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_interrupting_the_parent_interrupts_the_payload_once(apptainer_double, exec_image):
    proc = start(apptainer_double, exec_image, "python3", "-c", INTERRUPT_LOOP)
    assert proc.stdout.readline() == "ready\n"
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert (int(out), proc.returncode) == (1, 0)


# Counts deliveries exactly: a real-time signal queues in the kernel (two SIGINTs may merge),
# and sigtimedwait dequeues them one by one (Python's own handlers would merge them too).
RT_COUNTER = """
import signal
sig = signal.SIGRTMIN + 1
signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
print("ready", flush=True)
count = 0
while signal.sigtimedwait({sig}, 1.5):
    count += 1
print(count, flush=True)
"""


@pytest.mark.parametrize(("send", "expected"), [("parent", 1), ("group", 2)])
def test_group_signals_reach_the_payload_directly_and_forwarded(
    apptainer_double, exec_image, send, expected
):
    proc = start(apptainer_double, exec_image, "python3", "-c", RT_COUNTER)
    assert proc.stdout.readline() == "ready\n"
    kill = os.kill if send == "parent" else os.killpg
    kill(proc.pid, signal.SIGRTMIN + 1)
    out, _ = proc.communicate(timeout=20)
    assert (int(out), proc.returncode) == (expected, 0)


def test_killing_the_parent_kills_the_payload_but_not_its_children(apptainer_double, image):
    proc = start(apptainer_double, image, "sh", "-c", "sleep 30 & echo $!; echo $$; wait")
    child, payload = int(proc.stdout.readline()), int(proc.stdout.readline())
    assert os.getpgid(payload) == os.getpgid(child) == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    deadline = time.time() + 5
    while alive(payload) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert (alive(payload), alive(child)) == (False, True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_host_tmp_is_bound_by_default(run, tmp_path):
    # tmp_path lives in the host's /tmp: a kernel that does not hide it sees every other's files
    (tmp_path / "on-the-host").write_text("seen")
    result = run("cat", str(tmp_path / "on-the-host"))
    assert (result.returncode, result.stdout) == (0, "seen")


def test_a_bind_over_tmp_hides_the_hosts(run, tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # a current folder under /tmp would be bound there
    (tmp_path / "on-the-host").write_text("seen")
    private = tmp_path / "private"
    private.mkdir()
    result = run("ls", "-A", "/tmp", options=["--bind", f"{private}:/tmp"])
    assert (result.returncode, result.stdout) == (0, "")


def test_the_runtime_parent_outlives_its_own_parent(apptainer_double, image):
    # A SIGKILLed Jupyter server: nothing tells the starter, so it and the payload live on.
    launcher = subprocess.Popen(
        ["python3", "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]);"
         "print(p.pid, flush=True); p.wait()",
         str(apptainer_double), "exec", str(image), "sleep", "300"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    starter = int(launcher.stdout.readline())
    try:
        launcher.kill()
        launcher.wait(timeout=10)
        time.sleep(1)
        assert alive(starter)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.stdout.close()


# ------------------------------------------------------------------ single-file images (SIF)

# sha256 of github.com/apptainer/sif v2.20.2 pkg/sif/testdata/TestCreateContainer/
# TwoDescriptorsAligned.golden: what the Go library writes for the same two objects.
SIF_GOLDEN_SHA256 = "bc3192f152d5287092699ad506e731823f77defb18d29350431e706e35ea624f"


def test_the_sif_writer_lays_out_bytes_as_the_sif_library_does():
    out = io.BytesIO()
    partition = sif.PARTITION.pack(sif.FS_SQUASH, sif.PART_PRIMSYS, sif.ARCHES["386"])
    objects = [
        (0x4007, b"\xfa\xce", b"", b"", 4),
        (sif.DATA_PARTITION, b"\xfe\xed", b"", partition, 4),
    ]
    zero_time = -62135596800  # Go's time.Time{}.Unix(): OptCreateDeterministic
    sif.write_objects(
        out, objects, arch=sif.ARCHES["386"], launch=b"", ident=bytes(16), now=zero_time
    )
    assert hashlib.sha256(out.getvalue()).hexdigest() == SIF_GOLDEN_SHA256


def test_image_files_are_found_as_apptainer_finds_them(sif_image, squashfs_image, tmp_path):
    kind, offset, size = sif.rootfs(str(sif_image))
    assert (kind, offset % 4096, size) == ("sif", 0, squashfs_image.stat().st_size)
    assert sif.rootfs(str(squashfs_image)) == ("squashfs", 0, squashfs_image.stat().st_size)
    launcher = tmp_path / "launch.sqfs"  # a SquashFS after a launch script also runs
    launcher.write_bytes(b"#!/usr/bin/env run-singularity\n" + squashfs_image.read_bytes()[:8192])
    assert sif.rootfs(str(launcher))[:2] == ("squashfs", 31)


def mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mounts:
        return [line.split()[4] for line in mounts if line.split()[4].startswith(f"{folder}/")]


@needs_fuse
@pytest.mark.parametrize("kind", ["sif", "squashfs"])
def test_a_single_file_image_runs_and_leaves_nothing(apptainer_double, request, kind, tmp_path):
    path = request.getfixturevalue(f"{kind}_image")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the double makes its mount point
    script = 'echo "$APPTAINER_CONTAINER $APPTAINER_NAME"; python3 -c "print(6 * 7)"; exit 3'
    out = subprocess.run(
        [apptainer_double, "exec", path, "sh", "-c", script],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert (out.returncode, out.stdout, out.stderr) == (3, f"{path} {path.name}\n42\n", "")
    assert (list(tmp_path.iterdir()), mounts_under(tmp_path)) == ([], [])


@needs_fuse
def test_a_signal_to_the_parent_unmounts_too(apptainer_double, sif_image, tmp_path):
    proc = subprocess.Popen(
        [apptainer_double, "exec", sif_image, "sh", "-c", "echo up; exec sleep 60"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.stdout.readline() == "up\n"
    assert len(mounts_under(tmp_path)) == 1
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    proc.stdout.close()
    assert (list(tmp_path.iterdir()), mounts_under(tmp_path)) == ([], [])


@needs_fuse
def test_after_a_sigkill_a_watchdog_unmounts(apptainer_double, sif_image, tmp_path):
    """Nothing of the double runs after SIGKILL (a launcher's shutdown kills the whole group):
    a watchdog of its own session unmounts lazily; the payload's orphan still sees its files."""
    script = "sleep 60 & echo $!; echo up; wait"
    proc = subprocess.Popen(
        [apptainer_double, "exec", sif_image, "sh", "-c", script],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        orphan = int(proc.stdout.readline())
        assert proc.stdout.readline() == "up\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        deadline = time.time() + 10
        while (mounts_under(tmp_path) or list(tmp_path.iterdir())) and time.time() < deadline:
            time.sleep(0.05)
        assert (mounts_under(tmp_path), list(tmp_path.iterdir())) == ([], [])
        assert alive(orphan)
        assert Path(f"/proc/{orphan}/root/usr/bin/python3").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()


def test_unsquash_runs_from_a_temporary_sandbox_removed_after(
    apptainer_double, sif_image, tmp_path
):
    script = 'echo "$APPTAINER_CONTAINER"'
    out = subprocess.run(
        [apptainer_double, "exec", "--unsquash", sif_image, "sh", "-c", script],
        capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=300, check=False,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (
        0,
        "INFO:    Converting SIF file to temporary sandbox...\n",
    )
    assert re.fullmatch(rf"{tmp_path}/rootfs-[^/]+/root\n", out.stdout)
    assert list(tmp_path.iterdir()) == []


def test_without_squashfuse_a_sif_is_extracted(apptainer_double, sif_image, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with what the double needs, but no squashfuse
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    for tool in ("bwrap", "unsquashfs"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    out = subprocess.run(
        [apptainer_double, "exec", sif_image, "true"], capture_output=True, text=True,
        env={**os.environ, "PATH": str(bin_dir), "TMPDIR": str(tmp_path)}, timeout=300,
        check=False,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (
        0,
        "INFO:    squashfuse not found, will not be able to mount SIF or other squashfs files\n"
        "INFO:    Converting SIF file to temporary sandbox...\n",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]


@pytest.mark.parametrize(
    ("message", "notes"),
    [
        ("fuse: failed to open /dev/fuse: Permission denied", ""),
        (
            "fusermount3: mount failed: Operation not permitted",
            "INFO:    A fusermount error may indicate that the kernel is too old\n"
            "INFO:    The --unsquash option may work around it\n",
        ),
    ],
)
def test_a_failing_fuse_mount_is_fatal(apptainer_double, sif_image, tmp_path, message, notes):
    """Unprivileged with no access to /dev/fuse, Apptainer's squashfuse_ll fails so (seen on
    1.4.5: only --unsquash works then); here a stand-in squashfuse_ll fails the same way."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "squashfuse_ll"
    fake.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = subprocess.run(
        [apptainer_double, "exec", sif_image, "true"], capture_output=True, text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)},
        timeout=60, check=False,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (
        255,
        f"{notes}FATAL:   container creation failed: image driver mount failure: image driver "
        f"squashfuse_ll instance exited with error: squashfuse_ll exited: {message}\n",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]


# ------------------------------------------------------------------------ pull and registries

PULL_INFO = (
    "INFO:    Converting OCI blobs to SIF format\n"
    "INFO:    Starting build...\n"
    "INFO:    Fetching OCI image...\n"
    "INFO:    Extracting OCI image...\n"
    "INFO:    Inserting Apptainer configuration...\n"
    "INFO:    Creating SIF file...\n"
    # mksquashfs older than 4.6 (Debian 12's 4.5.1) has no -percentage: no progress bar
    "INFO:    To see mksquashfs output with progress bar enable verbose logging\n"
)
TINY = "ck-double/tiny"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="session")
def apptainer_cache(tmp_path_factory) -> Path:
    """One APPTAINER_CACHEDIR for the session's pulls."""
    return tmp_path_factory.mktemp("apptainer-cache")


@pytest.fixture
def apptainer(apptainer_double, apptainer_cache, tmp_path):
    """apptainer(*args, env=...): the double in tmp_path with the session's cache."""

    def _apptainer(*args, env=None, cwd=tmp_path, timeout=600):
        environment = {**os.environ, "APPTAINER_CACHEDIR": str(apptainer_cache), **(env or {})}
        return subprocess.run(
            [str(apptainer_double), *map(str, args)], capture_output=True, text=True,
            env=environment, cwd=cwd, timeout=timeout, check=False,
        )  # fmt: skip

    return _apptainer


def registry_request(registry, method, path, data=None, headers=None):
    request = urllib.request.Request(
        f"https://{registry.address}{path}", data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def push_blob(registry, name, data, media_type) -> dict:
    """A monolithic upload (POST, then PUT with the digest), skipped when the blob is there."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if registry_request(registry, "HEAD", f"/v2/{name}/blobs/{digest}")[0] != 200:
        status, headers, _ = registry_request(registry, "POST", f"/v2/{name}/blobs/uploads/")
        assert status == 202
        location = headers["Location"].removeprefix(f"https://{registry.address}")
        separator = "&" if "?" in location else "?"
        status, _, body = registry_request(
            registry, "PUT", f"{location}{separator}digest={digest}", data,
            {"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert status == 201, body
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def push_manifest(registry, name, reference, manifest) -> str:
    body = json.dumps(manifest).encode()
    status, headers, answer = registry_request(
        registry, "PUT", f"/v2/{name}/manifests/{reference}", body,
        {"Content-Type": manifest["mediaType"]},
    )  # fmt: skip
    assert status == 201, answer
    return headers["Docker-Content-Digest"]


def tar_layer(entries) -> tuple[bytes, bytes]:
    """A reproducible layer: (its tar, gzipped). ENTRIES: (name, kind, content or target, mode)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_700_000_000
            info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE,
                         "link": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]  # fmt: skip
            if kind in ("link", "hard"):
                info.linkname = content
            data = content if kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return raw.getvalue(), gzip.compress(raw.getvalue(), mtime=0)


def push_image(registry, name, reference, layers, *, env, architecture="amd64") -> str:
    """Push LAYERS (as tar_layer gives them) with a config holding ENV; the manifest digest."""
    descriptors = [
        push_blob(registry, name, gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        for _, gz in layers
    ]
    config = {
        "architecture": architecture, "os": "linux",
        "config": {"Env": env, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t, _ in layers]},
    }  # fmt: skip
    config_blob = json.dumps(config, sort_keys=True).encode()
    config_type = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": push_blob(registry, name, config_blob, config_type),
        "layers": descriptors,
    }  # fmt: skip
    return push_manifest(registry, name, reference, manifest)


@pytest.fixture(scope="session")
def tiny_layers(image) -> list[tuple[bytes, bytes]]:
    """Two layers: dash and the C library from the test image, files and 2 MiB of noise (not
    compressible); then whiteouts, an opaque directory, a hard link, a symlink, a setuid file."""

    def read(path):
        return (image / path).read_bytes()

    libs = "usr/lib/x86_64-linux-gnu"
    base = [
        *((d, "dir", None, 0o755) for d in ("usr", "usr/bin", "usr/lib", libs, "usr/lib64",
                                             "etc", "opt", "opt/old", "data")),
        ("tmp", "dir", None, 0o1777),
        ("bin", "link", "usr/bin", 0o777), ("lib", "link", "usr/lib", 0o777),
        ("lib64", "link", "usr/lib64", 0o777),
        ("usr/bin/dash", "file", read("usr/bin/dash"), 0o755),
        ("usr/bin/sh", "link", "dash", 0o777),
        (f"{libs}/libc.so.6", "file", read(f"{libs}/libc.so.6"), 0o755),
        (f"{libs}/ld-linux-x86-64.so.2", "file", read(f"{libs}/ld-linux-x86-64.so.2"), 0o755),
        ("usr/lib64/ld-linux-x86-64.so.2", "link", f"/{libs[4:]}/ld-linux-x86-64.so.2", 0o777),
        ("etc/keep", "file", b"kept\n", 0o644), ("etc/gone", "file", b"gone\n", 0o644),
        ("opt/old/a", "file", b"a\n", 0o644), ("opt/old/b", "file", b"b\n", 0o644),
        ("data/noise", "file", random.Random(0).randbytes(2 << 20), 0o644),
    ]  # fmt: skip
    top = [
        ("etc/.wh.gone", "file", b"", 0o644),
        ("opt/old/.wh..wh..opq", "file", b"", 0o644),
        ("opt/old/c", "file", b"c\n", 0o4755),
        ("etc/added", "file", b"added\n", 0o644),
        ("etc/link", "link", "keep", 0o777),
        ("usr/bin/hardsh", "hard", "usr/bin/dash", 0o755),
    ]
    return [tar_layer(base), tar_layer(top)]


@pytest.fixture(scope="session")
def tiny(registry, tiny_layers) -> tuple[str, str]:
    """A small two-layer image in the registry: (its URI, its manifest digest)."""
    env = ["PATH=/usr/bin:/bin", "TINY=tiny value"]
    digest = push_image(registry, TINY, "1", tiny_layers, env=env)
    return f"docker://{registry.address}/{TINY}:1", digest


@pytest.fixture(scope="session")
def python_uri(registry, no_ipykernel_image) -> str:
    """Debian's python3 image, pushed with ch-image (scripts/registry push)."""
    return registry.push(no_ipykernel_image, "ck-double/python:1")


def name_requests(registry, mark, name) -> list[tuple[str, str, int]]:
    return parse_requests(registry.requests_since(mark, name))


def test_pull_makes_a_sif_that_runs(apptainer, python_uri, tmp_path):
    out = apptainer("pull", python_uri)
    assert (out.returncode, out.stderr) == (0, PULL_INFO)
    sif_file = tmp_path / "python_1.sif"  # uri.GetName: <name>_<tag>.sif
    assert sif.rootfs(str(sif_file))[0] == "sif"
    assert sif_file.read_bytes().startswith(b"#!/usr/bin/env run-singularity\n\0")
    script = "import os, sys; print(sys.version_info[:2], os.environ['LD_LIBRARY_PATH'])"
    ran = apptainer("exec", "--cleanenv", sif_file, "python3", "-c", script)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "(3, 11) /.singularity.d/libs\n", "")
    listing = apptainer("exec", sif_file, "ls", "/.singularity.d/env")
    assert listing.stdout.split() == [
        "01-base.sh", "10-docker2singularity.sh", "90-environment.sh", "95-apps.sh",
        "99-base.sh", "99-runtimevars.sh",
    ]  # fmt: skip


def test_layers_whiteouts_and_image_environment(apptainer, tiny, tmp_path):
    uri, _ = tiny
    assert apptainer("pull", "tiny.sif", uri).returncode == 0
    script = (
        "for f in /etc/keep /etc/gone /etc/added /opt/old/a /opt/old/b /opt/old/c "
        '/usr/bin/hardsh; do [ -e "$f" ] && echo "$f"; done; echo "TINY=$TINY"; '
        "[ -u /opt/old/c ] && echo setuid; [ -L /etc/link ] && echo symlink; "
        "read line < /etc/link && echo $line"
    )
    out = apptainer("exec", "tiny.sif", "sh", "-c", script)
    assert (out.returncode, out.stderr) == (0, "")
    expected = ["/etc/keep", "/etc/added", "/opt/old/c", "/usr/bin/hardsh", "TINY=tiny value"]
    assert out.stdout.splitlines() == [*expected, *(["setuid"] if os.getuid() == 0 else []),
                                       "symlink", "kept"]  # fmt: skip


def test_a_second_pull_reuses_the_cache_but_asks_for_the_digest(
    apptainer, apptainer_cache, registry, tiny, tmp_path
):
    uri, digest = tiny
    assert apptainer("pull", "first.sif", uri).returncode == 0
    mark = registry.mark()
    out = apptainer("pull", "second.sif", uri)
    assert (out.returncode, out.stderr) == (0, "INFO:    Using cached SIF image\n")
    assert name_requests(registry, mark, TINY) == [("HEAD", f"/v2/{TINY}/manifests/1", 200)]
    key = hashlib.sha256((digest.split(":")[1] + "amd64").encode()).hexdigest()
    cached = apptainer_cache / "cache" / "oci-tmp" / key  # oci.go getRefDigest
    assert cached.read_bytes() == (tmp_path / "second.sif").read_bytes()
    assert (tmp_path / "second.sif").stat().st_mode & 0o777 == 0o777 & ~current_umask()
    # Without the SIF, the blobs come from the cache's OCI layout: the manifest, no blob.
    cached.unlink()
    mark = registry.mark()
    out = apptainer("pull", "--force", "second.sif", uri)
    assert (out.returncode, out.stderr) == (0, PULL_INFO)
    assert [r[:2] for r in name_requests(registry, mark, TINY)] == [
        ("HEAD", f"/v2/{TINY}/manifests/1"), ("GET", f"/v2/{TINY}/manifests/1"),
    ]  # fmt: skip
    assert (apptainer_cache / "cache" / "blob" / "oci-layout").is_file()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_disable_cache_pulls_straight_to_the_destination(apptainer, registry, tiny, tmp_path):
    uri, _ = tiny
    cache = tmp_path / "unused-cache"
    out = apptainer("pull", "--disable-cache", "x.sif", uri, env={"APPTAINER_CACHEDIR": cache})
    assert (out.returncode, out.stderr, cache.exists()) == (0, PULL_INFO, False)
    assert apptainer("exec", "x.sif", "sh", "-c", "echo $TINY").stdout == "tiny value\n"


def test_an_index_gives_the_linux_amd64_image(apptainer, registry, tiny_layers):
    digests = {
        arch: push_image(
            registry, TINY, f"only-{arch}", tiny_layers, env=[f"ARCH={arch}"], architecture=arch
        )
        for arch in ("arm64", "amd64")
    }
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(registry_request(
                registry, "GET", f"/v2/{TINY}/manifests/{digest}",
                headers={"Accept": OCI_MANIFEST})[2]),
             "platform": {"os": "linux", "architecture": arch}}
            for arch, digest in digests.items()
        ],
    }  # fmt: skip
    push_manifest(registry, TINY, "multi", index)
    out = apptainer("pull", "multi.sif", f"docker://{registry.address}/{TINY}:multi")
    assert out.returncode == 0, out.stderr
    assert apptainer("exec", "multi.sif", "sh", "-c", "echo $ARCH").stdout == "amd64\n"


def test_an_existing_file_is_not_overwritten_without_force(apptainer, registry, tiny, tmp_path):
    uri, _ = tiny
    (tmp_path / "tiny_1.sif").write_text("mine")
    mark = registry.mark()
    out = apptainer("pull", uri)
    assert (out.returncode, out.stderr) == (
        255,
        'FATAL:   Image file already exists: "tiny_1.sif" - will not overwrite\n',
    )
    assert ((tmp_path / "tiny_1.sif").read_text(), name_requests(registry, mark, TINY)) == (
        "mine",
        [],
    )
    out = apptainer("pull", "--dir", tmp_path, uri)
    assert (
        out.stderr
        == f'FATAL:   Image file already exists: "{tmp_path}/tiny_1.sif" - will not overwrite\n'
    )
    out = apptainer("pull", "-F", uri)
    assert out.returncode == 0, out.stderr
    assert sif.rootfs(str(tmp_path / "tiny_1.sif"))[0] == "sif"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_registry_errors_are_fatal_and_leave_no_file(apptainer, registry, tiny, tmp_path):
    address = registry.address
    out = apptainer("pull", "x.sif", f"docker://{address}/{TINY}:nope")
    prefix = "FATAL:   While making image from oci registry: error fetching image to cache: "
    assert (out.returncode, out.stderr) == (
        255,
        f"{prefix}failed to get checksum for docker://{address}/{TINY}:nope: "
        f"reading manifest nope in {address}/{TINY}: manifest unknown\n",
    )
    port = free_port()
    for flags, scheme in (((), "https"), (("--no-https",), "http")):
        out = apptainer("pull", *flags, "x.sif", f"docker://127.0.0.1:{port}/{TINY}:1")
        assert (out.returncode, out.stderr) == (
            255,
            f"{prefix}failed to get checksum for docker://127.0.0.1:{port}/{TINY}:1: pinging "
            f'container registry 127.0.0.1:{port}: Get "{scheme}://127.0.0.1:{port}/v2/": '
            f"dial tcp 127.0.0.1:{port}: connect: connection refused\n",
        )
    assert list(tmp_path.iterdir()) == []


def test_library_uris_need_a_library(apptainer, image):
    note = "remote has no library client (see https://apptainer.org/docs/user/latest/endpoint.html#no-default-remote)"
    out = apptainer("pull", "library://alpine")
    assert (out.returncode, out.stderr) == (
        255, f"FATAL:   Unable to get library client configuration: {note}\n"
    )  # fmt: skip
    out = apptainer("exec", "library://alpine", "true")
    assert (out.returncode, out.stderr) == (
        255, f"FATAL:   Unable to handle library://alpine uri: {note}\n"
    )  # fmt: skip


def test_pull_flags_as_apptainers(apptainer, image):
    out = apptainer("pull", "--nohttps", "x.sif", "docker://127.0.0.1:1/x:1")
    assert out.returncode == 1  # registered for the actions only, not for pull
    assert out.stderr.startswith('Error for command "pull": unknown flag: --nohttps\n')
    out = apptainer("pull", "a.sif", "b.sif", "docker://x/y:1")
    assert out.stderr.startswith(
        'Error for command "pull": accepts between 1 and 2 arg(s), received 3\n'
    )
    out = apptainer("exec", "--nohttps", image, "true")
    assert (out.returncode, out.stderr) == (
        0,
        "Flag --nohttps has been deprecated, use --no-https\n",
    )


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs: no room for a SIF."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder], check=True)
    yield folder
    subprocess.run(["umount", folder], check=True)


def test_no_space_left_leaves_no_partial_file(apptainer, tiny, tiny_tmpfs):
    uri, _ = tiny
    (tiny_tmpfs / "tiny.sif").write_text("the old one")
    out = apptainer("pull", "--force", tiny_tmpfs / "tiny.sif", uri)
    assert out.returncode == 255
    assert re.fullmatch(
        r"(INFO: .*\n)*FATAL:   While making image from oci registry: error copying image out of "
        rf"cache: could not copy file: write {tiny_tmpfs}/tmp-copy-\d+: no space left on device\n",
        out.stderr,
    ), out.stderr
    # The copy is written beside it and renamed over it: the old file is intact.
    assert [p.name for p in tiny_tmpfs.iterdir()] == ["tiny.sif"]
    assert (tiny_tmpfs / "tiny.sif").read_text() == "the old one"
    # Without the cache the SIF is built in place (the old file removed first), and removed when
    # it cannot be written whole.
    out = apptainer("pull", "--force", "--disable-cache", tiny_tmpfs / "tiny.sif", uri)
    assert out.returncode == 255
    assert out.stderr.endswith(
        "FATAL:   While making image from oci registry: error fetching image to cache: while "
        "building SIF from layers: while creating SIF: while creating container: write "
        f"{tiny_tmpfs}/tiny.sif: no space left on device\n"
    ), out.stderr
    assert list(tiny_tmpfs.iterdir()) == []


def test_exec_of_a_docker_uri_pulls_into_the_cache(apptainer, apptainer_cache, registry, tiny):
    uri, digest = tiny
    key = hashlib.sha256((digest.split(":")[1] + "amd64").encode()).hexdigest()
    cached = apptainer_cache / "cache" / "oci-tmp" / key
    cached.unlink(missing_ok=True)
    out = apptainer("exec", uri, "sh", "-c", 'echo "$APPTAINER_CONTAINER $TINY"')
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{cached} tiny value\n", PULL_INFO)
    mark = registry.mark()
    out = apptainer("exec", uri, "sh", "-c", ":")
    assert (out.returncode, out.stderr) == (0, "INFO:    Using cached SIF image\n")
    assert name_requests(registry, mark, TINY) == [("HEAD", f"/v2/{TINY}/manifests/1", 200)]
    out = apptainer("exec", f"docker://{registry.address}/{TINY}:nope", "true")
    assert (out.returncode, out.stderr) == (
        255,
        f"FATAL:   Unable to handle docker://{registry.address}/{TINY}:nope uri: failed to get "
        f"checksum for docker://{registry.address}/{TINY}:nope: reading manifest nope in "
        f"{registry.address}/{TINY}: manifest unknown\n",
    )


def test_oras_pulls_the_sif_layer(apptainer, registry, tiny, tmp_path):
    uri, _ = tiny
    assert apptainer("pull", "made.sif", uri).returncode == 0
    made = (tmp_path / "made.sif").read_bytes()
    name = "ck-double/tiny-oras"
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": push_blob(registry, name, b"{}", "application/vnd.sylabs.sif.config.v1+json"),
        "layers": [push_blob(registry, name, made, "application/vnd.sylabs.sif.layer.v1.sif")],
    }  # fmt: skip
    push_manifest(registry, name, "1", manifest)
    oras = f"oras://{registry.address}/{name}:1"
    out = apptainer("pull", oras)
    assert (out.returncode, (tmp_path / "tiny-oras_1.sif").read_bytes() == made) == (0, True)
    assert out.stderr in ("INFO:    Downloading oras image\n", "INFO:    Using cached SIF image\n")
    out = apptainer("exec", oras, "sh", "-c", "echo $TINY")
    assert (out.returncode, out.stdout, out.stderr) == (
        0, "tiny value\n", "INFO:    Using cached SIF image\n"
    )  # fmt: skip
    out = apptainer("pull", "x.sif", f"oras://{registry.address}/{name}:nope")
    assert (out.returncode, out.stderr) == (
        255,
        "FATAL:   While pulling image from oci registry: error fetching image to cache: failed to "
        f"get checksum for oras://{registry.address}/{name}:nope: GET https://{registry.address}"
        f"/v2/{name}/manifests/nope: MANIFEST_UNKNOWN: manifest unknown; map[Tag:nope]\n",
    )
    out = apptainer("pull", "x.sif", f"oras://{registry.address}/{TINY}:1")
    assert out.stderr.endswith(": ORAS SIF image should have a single layer, found 2\n")

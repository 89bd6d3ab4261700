"""Tests of the apptainer test double itself (tests/apptainer_double/apptainer) against the
semantics in the reference notes: environment, home, binds, cwd, errors, exit codes and signals."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture
def run(apptainer_double, image):
    """run(*exec_options, command..., env=None): `apptainer exec OPTIONS IMAGE COMMAND`."""

    def _run(*args, options=(), env=None):
        argv = [str(apptainer_double), "exec", *options, str(image), *args]
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
    assert (out.returncode, out.stderr[:9]) == (255, "FATAL:   ")


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


def test_interrupting_the_parent_interrupts_the_payload_once(apptainer_double, image):
    proc = start(apptainer_double, image, "python3", "-c", INTERRUPT_LOOP)
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
    apptainer_double, image, send, expected
):
    proc = start(apptainer_double, image, "python3", "-c", RT_COUNTER)
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

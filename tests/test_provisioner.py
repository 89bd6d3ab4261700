"""Real kernels in a real root filesystem, started by jupyter_client through the provisioner."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import sys
import time
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager, KernelManager
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from kernels import KernelError, run, running_kernel
from traitlets import TraitError

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch.sessions import sessions_root


def sessions_left() -> list[str]:
    """Session folders (private files, connection-file copies) still under the sessions root."""
    return sorted(path.name for path in sessions_root().iterdir())


PROBE = "import os, sys; print(sys.executable, os.environ.get('HOME'), os.getcwd())"


@pytest.fixture
def notebook_dir(tmp_path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "data.txt").write_text("from the notebook folder")
    return folder


def test_kernel_runs_the_images_python_in_a_clean_environment(
    kernel_spec, notebook_dir, image, monkeypatch
):
    monkeypatch.setenv("CK_SENTINEL", "leaked")
    monkeypatch.setenv("PYTHONSTARTUP", "/nonexistent/startup.py")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret-token")
    monkeypatch.setenv("JPY_API_TOKEN", "secret-token")  # JupyterHub's old name for it
    monkeypatch.setenv("CK_ALLOWED_1", "passed by pattern")
    name = kernel_spec(
        pass_env=["CK_ALLOWED_*"],
        env={"CK_LITERAL": "$(echo evaluated) `id` \"q\" 'x', ünï"},
        spec_env={"CK_FROM_SPEC": "spec value"},
    )
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        out = run(kc, "import os, sys, json; print(json.dumps([sys.executable, dict(os.environ)]))")
    executable, env = json.loads(out)
    assert executable == "/usr/bin/python3"
    assert Path(image, executable.lstrip("/")).exists()
    assert executable != sys.executable
    for leaked in ("CK_SENTINEL", "PYTHONSTARTUP", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"):
        assert leaked not in env
    assert env["CK_ALLOWED_1"] == "passed by pattern"
    assert env["CK_LITERAL"] == "$(echo evaluated) `id` \"q\" 'x', ünï"
    assert env["CK_FROM_SPEC"] == "spec value"
    assert env["PYTHONNOUSERSITE"] == "1"
    assert env["JPY_PARENT_PID"] == str(os.getpid())


def test_fake_home_is_private_writable_and_persists(
    kernel_spec, notebook_dir, jupyter_dirs, real_home_tmp
):
    secret = real_home_tmp / "real-home-secret.txt"
    secret.write_text("must stay on the host")
    name = kernel_spec("ck-home")
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        home = run(kc, "import os; print(os.environ['HOME'])").strip()
        run(kc, "open(os.path.expanduser('~/kept.txt'), 'w').write('written inside')")
        visible = run(kc, f"print(os.path.exists({str(secret)!r}))").strip()
    assert home == pwd.getpwuid(os.getuid()).pw_dir
    assert visible == "False"
    host_home = jupyter_dirs["JUPYTER_DATA_DIR"] / "container-kernel" / "homes" / name
    assert (host_home / "kept.txt").read_text() == "written inside"
    assert host_home.stat().st_mode & 0o777 == 0o700
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        run(kc, "import os")
        assert run(
            kc, "print(open('/'.join([os.environ['HOME'], 'kept.txt'])).read())"
        ).strip() == ("written inside")


def test_temporary_home_survives_restart_and_goes_at_shutdown(kernel_spec, notebook_dir):
    name = kernel_spec("ck-temp", home="temporary")
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        run(kc, "import os; open(os.path.expanduser('~/x'), 'w').write('1')")
        host_home = Path(km.provisioner._temporary_home)
        assert (host_home / "x").exists()
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert (
            run(kc, "import os; print(os.path.exists(os.path.expanduser('~/x')))").strip() == "True"
        )
    assert not host_home.exists()


def test_relative_paths_resolve_in_the_notebook_folder(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (_, kc):
        out = run(kc, "import os; print(os.getcwd()); print(open('data.txt').read())")
    assert out.split("\n")[:2] == [str(notebook_dir), "from the notebook folder"]


def test_kernel_sees_its_own_connection_file_and_no_other(kernel_spec, notebook_dir, jupyter_dirs):
    server_secret = jupyter_dirs["JUPYTER_RUNTIME_DIR"] / "jpserver-1.json"
    server_secret.write_text('{"token": "server-token"}')
    read_own_connection_file = (
        "import sys, json; f = sys.argv[sys.argv.index('-f') + 1]; "
        "print(json.load(open(f))['key'], oct(os.stat(f).st_mode & 0o777))"
    )
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        run(kc, "import os")
        key_inside, mode = run(kc, read_own_connection_file).split()
        sees_server = run(kc, f"print(os.path.exists({str(server_secret)!r}))").strip()
    assert key_inside == km.session.key.decode()
    assert mode == "0o600"
    assert sees_server == "False"


def test_interrupt_reaches_the_kernel_once_and_the_next_cell_runs(kernel_spec, notebook_dir):
    code = """
import time
hits = 0
try:
    time.sleep(60)
except KeyboardInterrupt:
    hits += 1
    try:
        time.sleep(1.5)  # a second, forwarded SIGINT would land here
    except KeyboardInterrupt:
        hits += 1
print('interrupts', hits)
"""
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        msg_id = kc.execute(code)
        time.sleep(2)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=20)
        elapsed = time.monotonic() - started
        output = _stdout_of(kc, msg_id)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert "interrupts 1" in output
        assert elapsed < 10
        assert run(kc, "print(6 * 7)").strip() == "42"


def test_a_signal_reaches_the_kernel_exactly_once(kernel_spec, notebook_dir):
    # A real-time signal queues (two SIGINTs may merge): it counts deliveries exactly.
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        run(kc, "import signal; hits = []")
        run(kc, "signal.signal(signal.SIGRTMIN + 1, lambda *_: hits.append(1))")
        km.signal_kernel(signal.SIGRTMIN + 1)
        time.sleep(0.5)
        assert run(kc, "print(len(hits))").strip() == "1"


def _stdout_of(kc, msg_id) -> str:
    text = []
    while True:
        msg = kc.get_iopub_msg(timeout=10)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(text)


def test_shutdown_leaves_no_process(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        # A grandchild that ignores SIGTERM: only a group kill can remove it.
        run(kc, "import subprocess; subprocess.Popen(['sh', '-c', 'trap \"\" TERM; sleep 300'])")
        pgid = km.provisioner.pgid
        assert _group_members(pgid)
    assert _wait_until_empty(pgid) == []


def test_restart_gives_a_fresh_kernel(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        run(kc, "x = 1")
        old_pid = km.provisioner.pid
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        with pytest.raises(KernelError, match="NameError"):
            run(kc, "x")
        assert km.provisioner.pid != old_pid
        assert _wait_until_empty(old_pid) == []


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def _wait_until_empty(pgid: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (members := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


def test_missing_image_fails_at_once_with_a_clear_message(kernel_spec, notebook_dir, tmp_path):
    name = kernel_spec(image=str(tmp_path / "missing.sif"), home="temporary")
    km = KernelManager(kernel_name=name)
    with pytest.raises(ContainerKernelError, match=r"Image not found: .*missing\.sif"):
        km.start_kernel(cwd=str(notebook_dir))
    assert km.provisioner._temporary_home is None  # nothing left behind
    assert sessions_left() == []


def test_missing_runtime_fails_with_what_to_do(kernel_spec, notebook_dir, monkeypatch, tmp_path):
    name = kernel_spec()
    monkeypatch.setenv("PATH", str(tmp_path))
    km = KernelManager(kernel_name=name)
    with pytest.raises(ContainerKernelError, match=r"No container runtime found: .* not on PATH"):
        km.start_kernel(cwd=str(notebook_dir))


def test_malformed_bind_fails_before_anything_starts(kernel_spec, notebook_dir):
    km = KernelManager(kernel_name=kernel_spec(binds=["relative/path:/x:rw"]))
    with pytest.raises(TraitError, match=r"Malformed bind 'relative/path:/x:rw'"):
        km.start_kernel(cwd=str(notebook_dir))


def test_image_without_ipykernel_reports_the_kernels_own_error(kernel_spec, notebook_dir):
    name = kernel_spec()
    spec_file = Path(os.environ["JUPYTER_PATH"], "kernels", name, "kernel.json")
    spec = json.loads(spec_file.read_text())
    spec["argv"] = ["python3", "-m", "no_such_kernel_module", "-f", "{connection_file}"]
    spec_file.write_text(json.dumps(spec))
    km = KernelManager(kernel_name=name)
    started = time.monotonic()
    # the cause first (JupyterLab's dialog cuts long messages), then status and image
    with pytest.raises(
        ContainerKernelError,
        match=r"^/usr/bin/python3: No module named no_such_kernel_module \(the kernel exited at "
        r"start with status 1; image .*bookworm-ipykernel\)$",
    ):
        km.start_kernel(cwd=str(notebook_dir))
    assert time.monotonic() - started < 10
    km.cleanup_resources()


def test_a_kernel_that_finds_a_port_taken_and_hangs_is_started_again(kernel_spec, notebook_dir):
    # jupyter_client#487: a port taken between its choice and the kernel's bind; ipykernel 6.17
    # under ch-run says so, then hangs. Here a kernel that always does: three tries, each ended
    # at once (not after startup_check_timeout), then the start fails saying why.
    name = kernel_spec()
    spec_file = Path(os.environ["JUPYTER_PATH"], "kernels", name, "kernel.json")
    spec = json.loads(spec_file.read_text())
    hang = ("import sys, time; sys.stderr.write('zmq.error.ZMQError: Address already in use "
            "(addr=tcp://127.0.0.1:1)\\n'); sys.stderr.flush(); time.sleep(60)")  # fmt: skip
    spec["argv"] = ["python3", "-c", hang, "{connection_file}"]
    spec_file.write_text(json.dumps(spec))
    km = KernelManager(kernel_name=name)
    started = time.monotonic()
    with pytest.raises(ContainerKernelError, match=r"^zmq.error.ZMQError: Address already in use"):
        km.start_kernel(cwd=str(notebook_dir))
    assert time.monotonic() - started < 8  # (three tries; not 3 x 10 s)
    km.cleanup_resources()
    assert sessions_left() == []


def test_notebook_in_the_home_folder_keeps_the_fake_home(kernel_spec, real_home_tmp):
    real_home = real_home_tmp.parent
    (real_home_tmp / "only-here").write_text("real home")
    marker = f"{real_home_tmp.name}/only-here"  # a file that exists only in the real home
    with running_kernel(kernel_spec("ck-home-nb"), str(real_home)) as (_, kc):
        out = run(
            kc, f"import os; print(os.path.isfile({marker!r}), os.getcwd() != os.environ['HOME'])"
        )
        in_home = run(kc, f"print(os.path.exists(os.path.join(os.environ['HOME'], {marker!r})))")
    assert out.split() == ["True", "True"]  # relative paths resolve in the notebook's folder
    assert in_home.strip() == "False"  # and $HOME is still the fake one


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)  # the double runs directories
def test_squashfs_image_on_charliecloud(kernel_spec, squashfs_image, notebook_dir):
    name = kernel_spec("ck-sqfs", image=str(squashfs_image))
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        out = run(kc, "import os, sys; print(sys.executable, open('data.txt').read())")
        run(kc, "open(os.path.join(os.environ['HOME'], 'kept.txt'), 'w').write('1')")
    assert out.strip() == "/usr/bin/python3 from the notebook folder"


def _broken_spec(kernel_spec, **config) -> str:
    """A kernel spec whose kernel dies at start (its module does not exist in the image)."""
    name = kernel_spec("ck-broken", **config)
    spec_file = Path(os.environ["JUPYTER_PATH"], "kernels", name, "kernel.json")
    spec = json.loads(spec_file.read_text())
    spec["argv"] = ["python3", "-m", "no_such_kernel_module", "-f", "{connection_file}"]
    spec_file.write_text(json.dumps(spec))
    return name


async def test_failed_start_in_a_server_leaves_nothing_and_does_not_loop(kernel_spec, notebook_dir):
    # The manager class Jupyter Server uses: its restarter must not relaunch a kernel that
    # never started, and the start must leave no folder and no process behind.
    km = AsyncIOLoopKernelManager(kernel_name=_broken_spec(kernel_spec, home="temporary"))
    with pytest.raises(ContainerKernelError, match="No module named no_such_kernel_module"):
        await km.start_kernel(cwd=str(notebook_dir))
    provisioner, failed_pid = km.provisioner, km.provisioner.pid
    assert provisioner._temporary_home is None
    assert sessions_left() == []
    assert _group_members(provisioner.pgid) == []
    await asyncio.sleep(km.restarter_class.time_to_dead.default_value + 0.5)  # one restarter round
    assert provisioner.pid == failed_pid
    assert not await km.is_alive()


async def test_kernel_that_dies_later_leaves_no_process_and_restarts(kernel_spec, notebook_dir):
    km = AsyncKernelManager(kernel_name=kernel_spec())
    await km.start_kernel(cwd=str(notebook_dir))
    try:
        os.kill(km.provisioner.pid, signal.SIGKILL)  # the runtime parent dies: so does the kernel
        assert await _wait_for(km.provisioner.poll, lambda status: status is not None)
        assert _wait_until_empty(km.provisioner.pgid) == []
        await km.restart_kernel(now=True, newports=True)  # a new connection file, copied again
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)  # the kernel listens on the new ports
        finally:
            kc.stop_channels()
    finally:
        await km.shutdown_kernel(now=True)


async def test_a_restart_that_cannot_start_fails_as_a_dead_kernel_the_restarter_counts(
    kernel_spec, notebook_dir, tmp_path
):
    km = AsyncIOLoopKernelManager(kernel_name=kernel_spec())  # Jupyter Server's: a restarter
    await km.start_kernel(cwd=str(notebook_dir))
    try:
        km.provisioner.image = str(tmp_path / "deleted.sif")  # the image went away meanwhile
        await km.restart_kernel(now=True)  # does not raise: the restarter can count it
        assert await _wait_for(km.provisioner.poll, lambda status: status == 1)
        assert "Image not found" in "".join(km.provisioner._stderr_tail)
    finally:
        await km.shutdown_kernel(now=True)


@pytest.mark.parametrize("broken", ["image", "kernel"])
async def test_a_restart_that_cannot_start_raises_where_no_restarter_watches(
    kernel_spec, notebook_dir, tmp_path, broken
):
    # nbclient, the console, a script: nobody would ever count the dead kernel
    km = AsyncKernelManager(kernel_name=kernel_spec())
    await km.start_kernel(cwd=str(notebook_dir))
    try:
        if broken == "image":
            km.provisioner.image = str(tmp_path / "deleted.sif")
            message = "Image not found"
        else:
            km.kernel_spec.argv[2] = "no_such_kernel_module"
            message = "No module named no_such_kernel_module"
        with pytest.raises(ContainerKernelError, match=message):
            await km.restart_kernel(now=True)
    finally:
        await km.shutdown_kernel(now=True)
    assert sessions_left() == []


async def _wait_for(probe, done, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(await probe()):
            return True
        await asyncio.sleep(0.05)
    return False


def test_shutdown_now_kills_everything(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        run(kc, "import subprocess; subprocess.Popen(['sleep', '300'])")
        pgid = km.provisioner.pgid
        km.shutdown_kernel(now=True)
        assert _wait_until_empty(pgid) == []


def test_notebook_folder_with_a_comma(kernel_spec, tmp_path):
    folder = tmp_path / "data, 2024"
    folder.mkdir()
    (folder / "data.txt").write_text("found")
    with running_kernel(kernel_spec(), str(folder)) as (_, kc):
        assert run(kc, "print(open('data.txt').read())").strip() == "found"

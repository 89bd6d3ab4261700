"""`%%container` and `%container` in an in-process IPython shell and in a real ipykernel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from kernels import run, running_kernel
from nbclient import NotebookClient

from container_kernel import load_ipython_extension
from container_kernel.faces import cells
from container_kernel.faces.magics import ContainerCellError, ContainerMagics
from container_kernel.launch import sessions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def notebook_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "notebook"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    # Where sessions live (<runtime dir>/container-kernel): one of this test's own.
    runtime_dir = tmp_path / "jupyter-runtime"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("CONTAINER_KERNEL_IMAGE", raising=False)
    return folder


@pytest.fixture
def shell(notebook_dir):
    """The in-process IPython shell with a fresh ContainerMagics (no configured image).

    `%config` also writes the shell's config, which later instances read: cleared both ways."""
    ip = globalipapp.get_ipython()  # the module attribute: the shell once started
    sections = ("ContainerMagics", "ContainerSettings")
    for section in sections:
        ip.config.pop(section, None)
    magics = ContainerMagics(shell=ip)
    ip.register_magics(magics)
    yield ip
    ip.configurables.remove(magics)
    for section in sections:
        ip.config.pop(section, None)


@pytest.fixture
def ip(shell, image, runtime):
    """The shell with the test image and the runtime under test configured through %config."""
    shell.run_line_magic("config", f"ContainerMagics.image = {str(image)!r}")
    shell.run_line_magic("config", f"ContainerMagics.runtime = {runtime!r}")
    return shell


def cell(ip, line: str, body: str):
    """Run `%%container line` + body as a notebook cell; the exception it raised, if any."""
    result = ip.run_cell(f"%%container {line}\n{body}")
    return result.error_before_exec or result.error_in_exec


class Recorder:
    """A stand-in for sys.stdout/sys.stderr that notes when each piece arrived."""

    def __init__(self, name: str, writes: list[tuple[float, str, str]]):
        self.name, self.writes = name, writes

    def write(self, text: str) -> None:
        self.writes.append((time.monotonic(), self.name, text))

    def flush(self) -> None:
        pass


def record_writes(monkeypatch) -> list[tuple[float, str, str]]:
    """(time, "out" or "err", text) of every write to sys.stdout and sys.stderr from now on
    (in the test's body: pytest's capture replaces them again between setup and call)."""
    noted: list[tuple[float, str, str]] = []
    monkeypatch.setattr(sys, "stdout", Recorder("out", noted))
    monkeypatch.setattr(sys, "stderr", Recorder("err", noted))
    return noted


def test_cell_runs_the_images_python_and_streams_live(ip, notebook_dir, monkeypatch):
    writes = record_writes(monkeypatch)
    body = (
        "import os, sys, time\n"
        "print(sys.executable, sys.version_info[:2], os.getcwd())\n"
        "print('to stderr', file=sys.stderr)\n"
        "print('ünïcode ✓')\n"
        "time.sleep(1.5)\n"
        "print('last')\n"
    )
    assert cell(ip, "", body) is None
    out = "".join(text for _, name, text in writes if name == "out")
    err = "".join(text for _, name, text in writes if name == "err")
    assert out == f"/usr/bin/python3 (3, 11) {notebook_dir}\nünïcode ✓\nlast\n"
    assert err == "to stderr\n"
    out_times = [t for t, name, _ in writes if name == "out"]
    assert out_times[-1] - out_times[0] > 1.0, "the first line came only when the cell ended"


def test_partial_lines_stream_live_and_the_error_tail_shows_the_last_state(ip, monkeypatch):
    writes = record_writes(monkeypatch)
    body = (
        "import sys, time\n"
        "for percent in (10, 20, 30):\n"
        "    print('\\r %d%%' % percent, end='', file=sys.stderr, flush=True)\n"
        "    time.sleep(1)\n"
        "sys.exit(3)\n"
    )
    error = cell(ip, "", body)
    ended = time.monotonic()
    err = [(t, text) for t, name, text in writes if name == "err"]
    assert "".join(text for _, text in err).startswith("\r 10%\r 20%\r 30%")
    first = next(t for t, text in err if "10%" in text)
    assert ended - first > 2.0, "the progress bar came only when the cell ended"
    assert isinstance(error, ContainerCellError)
    assert str(error).endswith("Last lines of stderr:\n30%")  # what the terminal showed last


def test_other_interpreters_and_the_line_magic(ip, capsys):
    assert cell(ip, "bash", 'echo "bash $BASH_VERSION"; echo oops >&2') is None
    out, err = capsys.readouterr()
    assert out.startswith("bash 5.")
    assert err == "oops\n"
    ip.run_line_magic("container", "cat /etc/debian_version")
    assert capsys.readouterr().out.startswith("12.")
    ip.run_line_magic("container", "python3 -c 'import sys; print(sys.executable)'")
    assert capsys.readouterr().out == "/usr/bin/python3\n"


def test_non_zero_exit_raises_with_code_and_stderr_tail(ip, capsys):
    body = "import sys\nfor i in range(30): print('line', i, file=sys.stderr)\nsys.exit(3)\n"
    error = cell(ip, "", body)
    assert isinstance(error, ContainerCellError)
    assert error.returncode == 3
    assert "exited with status 3" in str(error)
    assert "line 29" in str(error)
    assert "line 19" not in str(error)  # a tail, not the whole stderr
    assert error._render_traceback_() == [f"ContainerCellError: {error}"]
    error = cell(ip, "", "1 / 0\n")
    assert isinstance(error, ContainerCellError)
    assert "ZeroDivisionError: division by zero" in str(error)
    assert cell(ip, "--no-raise-error bash", "exit 4") is None
    assert cell(ip, "bash", "exit 0") is None


def test_out_and_err_capture_instead_of_printing(ip, capsys):
    assert cell(ip, "--out o --err e bash", "echo one; echo two >&2; echo three") is None
    assert capsys.readouterr() == ("", "")
    assert ip.user_ns["o"] == "one\nthree\n"
    assert ip.user_ns["e"] == "two\n"


def test_inputs_and_outputs_round_trip(ip, notebook_dir, monkeypatch):
    # A class both sides can import: a module in the notebook's folder (bound in, the cwd).
    (notebook_dir / "shapes_ck.py").write_text(
        "class Point:\n"
        "    def __init__(self, x, y): self.x, self.y = x, y\n"
        "    def __eq__(self, other): return (self.x, self.y) == (other.x, other.y)\n"
    )
    monkeypatch.syspath_prepend(str(notebook_dir))
    monkeypatch.delitem(sys.modules, "shapes_ck", raising=False)
    ip.run_cell(
        "from shapes_ck import Point\ndata = {'a': [1, 2], 'b': {'c': 'ü'}}\np = Point(1, 2)\n"
    )
    body = (
        "import sys\n"
        "assert sys.executable == '/usr/bin/python3'\n"
        "data['added'] = True\n"
        "q = Point(p.x + 10, p.y + 20)\n"
    )
    assert cell(ip, "-i data -i p -o data -o q", "from shapes_ck import Point\n" + body) is None
    assert ip.user_ns["data"] == {"a": [1, 2], "b": {"c": "ü"}, "added": True}
    assert ip.user_ns["q"] == ip.user_ns["Point"](11, 22)
    assert type(ip.user_ns["q"]).__module__ == "shapes_ck"


def test_values_cross_when_the_hosts_tmp_is_shared_too(ip):
    """With --share-tmp the cell's files sit in a folder of their own (ch-run may relocate it:
    the paths in the command follow)."""
    ip.run_cell("x = 20")
    assert cell(ip, "--share-tmp -i x -o y", "y = x + 1\n") is None
    assert ip.user_ns["y"] == 21


def test_values_that_cannot_cross_get_a_clear_error(ip):
    ip.run_cell("import threading\nlock = threading.Lock()")
    error = cell(ip, "-i lock", "pass")
    assert isinstance(error, UsageError)
    assert "-i lock: cannot send it" in str(error)
    error = cell(ip, "-o inner", "import threading\ninner = threading.Lock()")
    assert isinstance(error, ContainerCellError)
    assert "-o inner: TypeError" in str(error)
    error = cell(ip, "-o missing", "pass")
    assert "-o missing: not defined in the cell" in str(error)


def test_clean_environment_and_env_options(ip, capsys, monkeypatch):
    monkeypatch.setenv("CK_SENTINEL", "leaked")
    monkeypatch.setenv("CK_PASSED_1", "by pattern")
    show = "import json, os\nprint(json.dumps(dict(os.environ)))\n"
    assert cell(ip, "--env 'CK_SET=$(id) x' --pass-env 'CK_PASSED_*'", show) is None
    env = json.loads(capsys.readouterr().out)
    assert "CK_SENTINEL" not in env
    assert env["CK_SET"] == "$(id) x"
    assert env["CK_PASSED_1"] == "by pattern"
    assert env["PYTHONNOUSERSITE"] == "1"
    assert cell(ip, "--no-cleanenv", show) is None
    assert json.loads(capsys.readouterr().out)["CK_SENTINEL"] == "leaked"


def test_fake_home_persists_across_cells_temporary_does_not(ip, tmp_path, capsys, image):
    write = "import os\nopen(os.path.expanduser('~/kept.txt'), 'w').write('kept')\n"
    read = "import os\nprint(os.path.exists(os.path.expanduser('~/kept.txt')))\n"
    assert cell(ip, "", write) is None
    assert cell(ip, "", read) is None
    assert capsys.readouterr().out == "True\n"
    homes = tmp_path / "jupyter-data" / "container-kernel" / "homes"
    (host_home,) = homes.glob(f"magic-{image.name}-*")  # one per image path
    assert (host_home / "kept.txt").read_text() == "kept"
    assert host_home.stat().st_mode & 0o777 == 0o700
    assert cell(ip, "--home temporary", write) is None
    assert cell(ip, "--home temporary", read) is None
    assert capsys.readouterr().out == "False\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "No image"),
        ("--runtime-path /nonexistent/apptainer IMG", "is not an executable"),
        ("-B relative/path IMG", "Malformed bind"),
        ("--env NOVALUE IMG", "--env takes NAME=VALUE"),
        ("--home elsewhere IMG", "home must be one of"),
        ("--runtime docker IMG", "expected any of ['auto', 'apptainer'"),
        ("/nonexistent/image.sif", "Image not found"),
        ("-i x IMG bash", "-i/-o work only"),
        ("IMG --env A=1 bash", "Options go before IMAGE and COMMAND"),
        ("--env 'A=1 IMG", "No closing quotation"),
        ("--placement slurm -o x IMG", "-o needs the cell's folder back"),
    ],
)
def test_bad_options_are_one_line_usage_errors(shell, image, line, message):
    error = cell(shell, line.replace("IMG", str(image)), "print(1)")
    assert isinstance(error, UsageError)
    assert message in str(error)
    assert "\n" not in str(error)


def test_line_magic_needs_a_command(shell, image):
    with pytest.raises(UsageError, match="needs a COMMAND"):
        shell.run_line_magic("container", str(image))


def processes_with(token: str) -> list[int]:
    """Live pids whose command line holds `token`, or whose process group is `token` (a pid).
    Zombies are dead: an init that is slow to reap them (or none, in a PID namespace) is not
    our concern."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state, _, group = (entry / "stat").read_text().rpartition(")")[2].split()[:3]
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue
        if state != "Z" and (token in cmdline or group == token):
            found.append(int(entry.name))
    return found


def test_interrupt_stops_the_container_and_all_it_started(ip, notebook_dir, monkeypatch, image):
    started: list[subprocess.Popen] = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if str(image) in self.args:  # the container, not a runtime's --version probe
                started.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    body = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '61.731'])\n"
        "open('started', 'w').close()\n"
        "print('start', flush=True)\n"
        "time.sleep(60)\n"
    )

    def interrupt():
        deadline = time.monotonic() + 30
        while not (notebook_dir / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    begin = time.monotonic()
    error = cell(ip, "", body)
    assert isinstance(error, KeyboardInterrupt)
    assert time.monotonic() - begin < 15
    (proc,) = started
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while (left := processes_with("61.731") + processes_with(str(proc.pid))) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert left == []
    assert cell(ip, "bash", "echo still usable") is None


def test_interrupt_reaches_what_the_cell_runs_not_only_the_cell(ip, monkeypatch):
    """os.system ignores SIGINT while its child runs: the child must get it too (Apptainer's
    starter forwards it to the cell's process alone), and the cell go on, without SIGTERM."""
    writes = record_writes(monkeypatch)
    sent: list[float] = []

    def interrupt():
        deadline = time.monotonic() + 30
        while not processes_with("sleep 30.417") and time.monotonic() < deadline:
            time.sleep(0.05)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    error = cell(ip, "", "import os\nos.system('sleep 30.417')\nprint('after', flush=True)\n")
    ended = time.monotonic()
    assert isinstance(error, KeyboardInterrupt)
    assert str(error) == "the container process was interrupted"  # not terminated or killed
    assert ended - sent[0] < cells.INTERRUPT_GRACE
    assert "after\n" in "".join(text for _, name, text in writes if name == "out")
    assert processes_with("30.417") == []


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["shutdown", "restart", "SIGKILL"])
def test_no_cell_job_or_folder_outlives_its_kernel(jupyter_dirs, notebook_dir, image, runtime, how):
    """A kernel shut down or restarted now (SIGKILL to its group) or SIGKILLed alone: the
    running cell's container, what it started in a new session, and its folder all go."""
    root = Path(os.environ["JUPYTER_RUNTIME_DIR"], "container-kernel")
    setup = (
        "%load_ext container_kernel\n"
        f"%config ContainerMagics.image = {str(image)!r}\n"
        f"%config ContainerMagics.runtime = {runtime!r}\n"
    )
    body = (
        "%%container\n"
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "open('started', 'w').close()\n"
        "time.sleep(300)\n"
    )
    with running_kernel("python3", str(notebook_dir)) as (km, kc):
        run(kc, setup)
        kc.execute(body)
        wait_until((notebook_dir / "started").exists, 60)
        (folder,) = root.iterdir()
        assert len(sessions.marked_processes(folder.name, inside_only=True)) >= 2  # cell, sleep
        if how == "shutdown":
            km.shutdown_kernel(now=True)
        elif how == "restart":
            km.restart_kernel(now=True)
        else:
            os.kill(km.provisioner.process.pid, signal.SIGKILL)
        wait_until(lambda: not sessions.marked_processes(folder.name), 10)
        assert sessions.marked_processes(folder.name) == []
        wait_until(lambda: not folder.exists(), 5)
        assert not folder.exists()
        if how == "restart":
            kc.wait_for_ready(timeout=60)
            run(kc, setup)
            assert run(kc, "%%container bash\necho still usable") == "still usable\n"
            assert list(root.iterdir()) == []


def test_kernel_interrupt_streams_stops_and_leaves_the_kernel_usable(
    jupyter_dirs, notebook_dir, image, runtime
):
    code = (
        "%load_ext container_kernel\n"
        f"%config ContainerMagics.image = {str(image)!r}\n"
        f"%config ContainerMagics.runtime = {runtime!r}\n"
    )
    with running_kernel("python3", str(notebook_dir)) as (km, kc):
        run(kc, code)
        # stop_on_error=False: ipykernel would abort the next request if it arrived within its
        # abort window after this cell's error, as it can on a busy machine
        kc.execute(
            "%%container\nimport time\nprint('start', flush=True)\ntime.sleep(60)\n",
            stop_on_error=False,
        )
        begin = time.monotonic()
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream" and "start" in msg["content"]["text"]:
                break
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=15)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - begin < 15
        assert run(kc, "print(6 * 7)") == "42\n"


@pytest.fixture
def ipython_config(tmp_path, monkeypatch, runtime) -> Path:
    """An IPython profile whose config file picks the runtime under test for every face."""
    ipython_dir = tmp_path / "ipython"
    (ipython_dir / "profile_default").mkdir(parents=True)
    config = ipython_dir / "profile_default" / "ipython_config.py"
    config.write_text(f"c.ContainerSettings.runtime = {runtime!r}\n")
    monkeypatch.setenv("IPYTHONDIR", str(ipython_dir))
    return config


def test_tour_notebook_runs_the_images_python(
    jupyter_dirs, notebook_dir, ipython_config, image, monkeypatch
):
    """What CI checks: the tour, run by nbclient in the venv's own ipykernel, finds the image
    through $CONTAINER_KERNEL_IMAGE and the runtime through an IPython config file."""
    monkeypatch.setenv("CONTAINER_KERNEL_IMAGE", str(image))
    notebook = nbformat.read(REPO / "notebooks" / "magic.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=120,
        coalesce_streams=True,  # as a notebook shows them: a line may come in pieces
        resources={"metadata": {"path": str(notebook_dir)}},
    )
    client.execute()
    texts = [
        output.get("text") or output.get("data", {}).get("text/plain", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for output in c.get("outputs", [])
    ]
    image_python = next(text for text in texts if text.startswith("image:"))
    assert image_python.split()[1] == "/usr/bin/python3"
    assert image_python.split()[2].startswith("3.11.")
    assert sys.executable not in image_python
    host_python = next(text for text in texts if text.startswith("host:"))
    assert host_python.split()[1] == sys.executable
    assert "{'mon': 54.5, 'tue': 57.2}" in texts  # -i/-o


def test_binds_and_option_precedence(ip, tmp_path, capsys, runtime):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("bound")
    ip.run_line_magic("config", "ContainerMagics.env = {'LEVEL': 'configured', 'KEEP': 'yes'}")
    body = "import os\nprint(open('/mnt/x.txt').read(), os.environ['LEVEL'], os.environ['KEEP'])\n"
    read_only = ":ro" if runtime == "apptainer" else ""  # ch-run has no read-only binds
    assert cell(ip, f"-B {data}:/mnt{read_only} --env LEVEL=cell", body) is None
    assert capsys.readouterr().out == "bound cell yes\n"  # the cell's option wins, for this cell
    assert cell(ip, f"-B {data}:/mnt", body) is None
    assert capsys.readouterr().out == "bound configured yes\n"


def test_no_private_folder_or_temporary_home_outlives_a_cell(ip, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert cell(ip, "--home temporary -o x", "x = 1\n") is None
    assert isinstance(cell(ip, "--home temporary", "raise SystemExit(3)\n"), ContainerCellError)
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []


def test_mount_points_in_a_shared_tmp_go_with_the_cell(
    ip, tmp_path, monkeypatch, squashfs_image, runtime
):
    """With the host's /tmp shared, ch-run mounts our folders it cannot create in a SquashFS
    image (the home, the cell's files) over folders it makes in that /tmp: they are the cell
    session's, and go with it."""
    host_tmp = tmp_path / "host-tmp"
    host_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(host_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    body = "import os\nprint(os.environ['HOME'], os.path.isdir(os.environ['HOME']))\n"
    assert cell(ip, f"--share-tmp --out seen {squashfs_image}", body) is None
    home, exists = ip.user_ns["seen"].split()
    assert exists == "True"
    if runtime == "charliecloud":
        assert home.startswith(f"/tmp/.container-kernel-{os.getuid()}/")  # staged
    assert [p.name for p in host_tmp.iterdir() if not p.name.startswith("ch-run_")] == []


def test_each_cell_runs_in_a_private_session_that_ends_with_it(ip, tmp_path, monkeypatch):
    """The cell's files (its pickled -i values) are in a session folder of its own, never in
    the host's /tmp, which other containers see; another session's files are not seen inside;
    nothing is left after the cell, and what a killed kernel left goes at the next cell."""
    host_tmp = tmp_path / "host-tmp"
    host_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(host_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    root = sessions.sessions_root()
    other = sessions.Session.create()  # a running kernel's, or another notebook's cell's
    (other.tmp / "other-secret").write_text("theirs")
    gone = subprocess.Popen(["true"])
    gone.wait()
    leaked = sessions.Session(root / f"{gone.pid}-1-0123456789ab@{socket.gethostname()}")
    leaked.tmp.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "61.732"], env={**os.environ, **leaked.environment})
    on_host: set[str] = set()
    watching = threading.Event()

    def watch():
        while not watching.is_set():
            on_host.update(p.name for p in host_tmp.iterdir())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ip.run_cell("secret = 's3cr3t'")
    body = (
        "import os, time\n"
        "print(secret, sorted(os.path.join(d, f) for d, _, fs in os.walk('/tmp') for f in fs))\n"
        f"print(os.path.exists({str(other.folder)!r}))\n"
        "time.sleep(0.5)\n"
    )
    try:
        assert cell(ip, "-i secret --out seen", body) is None
    finally:
        watching.set()
        watcher.join()
    first, second = ip.user_ns["seen"].splitlines()
    assert first.startswith("s3cr3t [")
    assert "other-secret" not in first
    assert second == "False"
    # (ch-run copies /etc/passwd and /etc/group to $TMPDIR for an instant, to bind them)
    assert [
        name for name in on_host if not name.startswith(("ch-run_passwd.", "ch-run_group."))
    ] == []
    assert list(host_tmp.iterdir()) == []
    assert orphan.wait(timeout=5) == -signal.SIGKILL
    assert [p.name for p in root.iterdir()] == [other.name]
    other.end()


def test_outputs_survive_a_clean_sys_exit(ip):
    assert cell(ip, "-o answer", "import sys\nanswer = 42\nsys.exit(0)\n") is None
    assert ip.user_ns["answer"] == 42


def test_help_documents_every_option(shell):
    help_text = " ".join(shell.find_cell_magic("container").__doc__.split())
    for flag in ("--bind", "--env", "--pass-env", "--home", "--no-cleanenv", "--gpu",
                 "--runtime", "-i", "-o", "--out", "--err", "--no-raise-error"):  # fmt: skip
        assert flag in help_text
    assert "--cleanenv, --no-cleanenv Start from a clean environment (the default)" in help_text


def test_the_sites_config_reaches_the_magic(notebook_dir, tmp_path, monkeypatch, image, runtime):
    site = tmp_path / "etc-jupyter"
    site.mkdir()
    (site / "jupyter_server_config.py").write_text(
        'c.ContainerSettings.env = {"OMP_NUM_THREADS": "1", "WHO": "site"}\n'
        f"c.ContainerSettings.runtime = {runtime!r}\n"
    )
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(site))
    ip = globalipapp.get_ipython()
    before = list(ip.configurables)
    load_ipython_extension(ip)  # what %load_ext container_kernel does
    (magics,) = [c for c in ip.configurables if c not in before]
    try:
        ip.run_cell(
            f"%%container --env WHO=cell --out seen {image}\n"
            "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['WHO'])"
        )
        assert ip.user_ns["seen"].split() == ["1", "cell"]  # the site's, under the cell's
    finally:
        ip.configurables.remove(magics)


def test_a_registry_image_is_pulled_once_with_its_progress_in_the_output(  # noqa: PLR0917
    shell, runtime, registry, no_python_image, tmp_path, capsys
):
    image = registry.push(no_python_image, "ck-images/nopython:1")
    line = f"--runtime {runtime} --image-cache {tmp_path / 'cache'} {image} cat /etc/debian_version"
    shell.run_line_magic("container", line)
    out = capsys.readouterr().out
    assert f"%container: Pulling {image}" in out  # the pull's progress, then the command's output
    assert "\n12." in out
    shell.run_line_magic("container", line)  # from the cache: nothing pulled, nothing said
    assert capsys.readouterr().out.startswith("12.")

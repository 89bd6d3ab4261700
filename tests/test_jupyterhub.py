"""A real JupyterHub, run as a site runs it: a container kernel for a real, unprivileged user.

As root, scripts/setup-hub (run here, like scripts/build-image for the image) gives the hub its
proxy (configurable-http-proxy, from npm), the users' environment (Debian's python3 with
jupyterhub, jupyterlab and this package) and a user, ck-hub. The hub runs from this Python with
tests/hub/jupyterhub_config.py as it is (the site's file, which docs/admins.md shows)
plus tests/hub/testing_config.py (free ports on 127.0.0.1, a password login, a temporary state
folder). The user logs in through the login page, as a browser does, gets an API token, starts
its server, installs a kernel spec with `container-kernel install`, and runs a kernel through
the hub's proxy (REST, then the kernel's websocket). The kernel must be the image's Python,
running as the user, with a fake home, and none of the hub's tokens; stopping the server through
the hub, the kernel running, must leave no process of the user within 20 s (and the next kernel
start must end the session folders it left); stopping the hub must leave nothing of it.

Needs root (a hub that spawns servers as other users does); elsewhere it is skipped, and
`make test`, which runs as root, runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
import websocket

REPO = Path(__file__).resolve().parent.parent
HUB_CONFIG = REPO / "tests" / "hub" / "testing_config.py"  # loads tests/hub/jupyterhub_config.py
STATE = Path(os.environ.get("CK_HUB_STATE", "/var/cache/container-kernel-hub"))
SPEC = "ck-hub-test"
OWN_MARK = ".container-kernel-hub-user"  # scripts/setup-hub created the user: its home is ours
HTTP_TIMEOUT = 60  # seconds, for one request: two busy cores


@pytest.fixture(scope="module")
def site(request) -> Iterator[dict[str, str]]:
    """scripts/setup-hub's answer (CK_HUB_USER, CK_HUB_ENV, CK_HUB_PROXY_BIN, CK_HUB_IMAGE), under
    a lock that keeps other runs of this test, which share the user, waiting until we are done."""
    if os.getuid() != 0:
        pytest.skip("a hub that spawns servers as another user runs as root (make test does)")
    image = request.getfixturevalue("image")  # (building it needs root too)
    STATE.mkdir(mode=0o755, parents=True, exist_ok=True)
    with (STATE / "test.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = subprocess.run(
            [REPO / "scripts" / "setup-hub", str(image)],
            env={**os.environ, "CK_HUB_PYTHON": sys.executable},
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, f"scripts/setup-hub failed:\n{out.stderr[-4000:]}"
        yield dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    env: Path  # the environment its server runs from

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        """Run a command as the user, in a clean login-like environment."""
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", f"HOME={self.home}",
             f"USER={self.name}", f"LOGNAME={self.name}", "LANG=C.UTF-8",
             f"PATH={self.env}/bin:/usr/local/bin:/usr/bin:/bin", *argv],
            cwd=self.home, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    def mkdir(self, path: Path) -> Path:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path

    def write(self, path: Path, text: str) -> Path:
        path.write_text(text)
        os.chown(path, self.uid, self.gid)
        return path


@pytest.fixture
def user(site) -> Iterator[User]:
    """The unprivileged user setup-hub made, its home emptied and no process of it left."""
    entry = pwd.getpwnam(site["CK_HUB_USER"])
    assert entry.pw_uid != 0, f"{entry.pw_name} is root: the test needs an unprivileged user"
    who = User(
        entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), Path(site["CK_HUB_ENV"])
    )
    assert (who.home / OWN_MARK).exists(), (
        f"{who.name} is not a user scripts/setup-hub created (no ~/{OWN_MARK}): the test kills "
        "its processes and empties its home; name a dedicated one with CK_HUB_USER"
    )
    _kill_all(who.uid)  # a crashed earlier run's
    _empty_home(who)
    yield who
    _kill_all(who.uid)
    _empty_home(who)


def _empty_home(user: User) -> None:
    for entry in user.home.iterdir():
        if entry.name != OWN_MARK:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    user.home.chmod(0o700)  # private, as on a cluster


def test_container_kernel_through_a_real_jupyterhub(site, user):
    image = Path(site["CK_HUB_IMAGE"])
    marker = user.write(user.home / "real-home-marker.txt", "in the real home only")
    project = user.mkdir(user.home / "ck-hub-project")
    user.write(project / "data.txt", "from the project folder")
    installed = user.run(
        "container-kernel", "install", str(image), "--runtime", "charliecloud",
        "--name", SPEC, "--display-name", "Python 3 (hub test image)",
    )  # fmt: skip
    assert installed.returncode == 0, f"container-kernel install failed:\n{installed.stderr}"

    password = secrets.token_urlsafe(16)
    with running_hub(site, password) as hub:
        run = kernel_through_the_hub(hub, user, password, project, marker)

    seen, env = run.seen, run.seen["env"]
    # The image's Python, as the user, in the project folder.
    assert seen["executable"] == "/usr/bin/python3"
    assert seen["image_mark"] == (image / ".container-kernel-image").read_text()
    assert seen["os_release"] == (image / "etc/os-release").read_text()
    assert seen["ipykernel"].startswith("/usr/lib/python3/dist-packages/")  # the image's Debian's
    assert (seen["uid"], seen["gid"]) == (user.uid, user.gid)
    assert "data.txt" in seen["cwd_files"]
    # A fake home: the real one's files are not there; what the kernel writes goes to the fake.
    assert env["HOME"] in (str(user.home), f"/tmp/.container-kernel-{user.uid}/home")
    assert (seen["marker_visible"], seen["marker_in_home"]) == (False, False)
    fake_home = user.home / ".local/share/jupyter/container-kernel/homes" / SPEC
    assert (fake_home / "written-inside.txt").read_text() == "from the kernel"
    # None of the hub's tokens: not the server's, not the user's.
    assert "JUPYTERHUB_API_TOKEN" not in env
    assert "JPY_API_TOKEN" not in env
    assert [name for name in env if name.startswith("JUPYTERHUB_")] == []
    for token in (run.server_token, run.user_token):
        assert [name for name, value in env.items() if token in value] == []
    # Stopped through the hub: nothing of the user left, and nothing of the hub.
    assert run.processes_left == [], f"processes of {user.name} left after its server stopped"
    assert hub.left == [], "processes of the hub left after it stopped"
    # The kernel's session folder: left by the stopped server, ended by the next start; a kernel
    # shut down through the API takes its own along.
    assert run.sessions_kept == [], f"sessions of a stopped server not ended: {run.sessions_left}"
    assert run.sessions_after_shutdown == []


@dataclass
class HubRun:
    seen: dict  # what the kernel printed (PROBE)
    server_token: str  # the token the hub gave the user's server
    user_token: str  # the token the user asked for
    processes_left: list[str]  # the user's, 20 s after its server stopped (each time)
    sessions_left: list[str]  # session folders after the first stop (kernel running)
    sessions_kept: list[str]  # of those, the ones the next kernel start did not end
    sessions_after_shutdown: list[str]  # after that kernel's shutdown through the REST API


def kernel_through_the_hub(
    hub: Hub, user: User, password: str, project: Path, marker: Path
) -> HubRun:
    """Log in; start the server, run PROBE in a container kernel through the proxy, stop the
    server with the kernel running; again, with a kernel shut down through the API."""
    browser = log_in(hub.url, user.name, password)
    token = api_token(browser, hub.url, user.name)
    user_server = UserServer(hub, user, token)

    user_server.start()
    server_token = _server_token(user.uid)
    kernel = user_server.start_kernel(project.name)
    ws_url = f"{user_server.url.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels"
    ws_url += f"?session_id={uuid.uuid4().hex}"
    seen = json.loads(execute(ws_url, token, PROBE.replace("MARKER", repr(str(marker)))))
    processes_left = user_server.stop()  # the kernel still runs: it must go with its server

    # Under JupyterHub a server's stop skips Jupyter Server's kernel shutdown (SIGINT without a
    # terminal): its kernels die with it and their sessions are ended by the next start.
    sessions_left = _sessions(user)
    user_server.start()
    kernel = user_server.start_kernel(project.name)
    sessions_kept = sorted(set(sessions_left) & set(_sessions(user)))
    shutdown = user_server.api.delete(
        f"{user_server.url}/api/kernels/{kernel}", timeout=HTTP_TIMEOUT
    )
    assert shutdown.status_code == 204, hub.explain(shutdown)
    sessions_after_shutdown = _sessions(user)
    processes_left += user_server.stop()
    return HubRun(
        seen, server_token, token, processes_left, sessions_left, sessions_kept,
        sessions_after_shutdown,
    )  # fmt: skip


class UserServer:
    """The user's server, through the hub's REST API and proxy, with the user's token."""

    def __init__(self, hub: Hub, user: User, token: str):
        self.hub, self.user = hub, user
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {token}"
        self.url = f"{hub.url}/user/{user.name}"
        self.hub_api = f"{hub.url}/hub/api/users/{user.name}"

    def model(self) -> dict:
        """The default server, as the hub reports it ({} when none)."""
        answer = self.api.get(self.hub_api, timeout=HTTP_TIMEOUT)
        assert answer.status_code == 200, self.hub.explain(answer)
        return answer.json().get("servers", {}).get("", {})

    def start(self) -> None:
        started = self.api.post(f"{self.hub_api}/server", timeout=HTTP_TIMEOUT)
        assert started.status_code in (201, 202), self.hub.explain(started)
        poll(lambda: self.model().get("ready"), 90, self.hub.explain, "ready")

    def start_kernel(self, path: str) -> str:
        """Start a kernel of the spec the user installed, in `path`; its id."""
        specs = self.api.get(f"{self.url}/api/kernelspecs", timeout=HTTP_TIMEOUT)
        assert SPEC in specs.json()["kernelspecs"], self.hub.explain(specs)
        kernel = self.api.post(
            f"{self.url}/api/kernels", json={"name": SPEC, "path": path}, timeout=HTTP_TIMEOUT
        )
        assert kernel.status_code == 201, self.hub.explain(kernel)
        return kernel.json()["id"]

    def stop(self) -> list[str]:
        """Stop the server through the hub; the user's processes still there 20 s later."""
        stopped = self.api.delete(f"{self.hub_api}/server", timeout=HTTP_TIMEOUT)
        assert stopped.status_code in (202, 204), self.hub.explain(stopped)
        poll(lambda: not self.model(), 60, self.hub.explain, "stopped")
        if poll(lambda: not user_processes(self.user.uid), 20, str, "", check=False):
            return []
        return user_processes(self.user.uid)


def _sessions(user: User) -> list[str]:
    """The user's container-kernel session folders (each kernel's private /tmp, its copy of its
    connection file)."""
    root = user.home / ".local/share/jupyter/runtime/container-kernel"
    return sorted(path.name for path in root.iterdir()) if root.is_dir() else []


PROBE = """
import json, os, sys, ipykernel
print(json.dumps({
    "executable": sys.executable,
    "uid": os.getuid(),
    "gid": os.getgid(),
    "env": dict(os.environ),
    "os_release": open("/etc/os-release").read(),
    "image_mark": open("/.container-kernel-image").read(),
    "ipykernel": ipykernel.__file__,
    "cwd_files": sorted(os.listdir()),
    "marker_visible": os.path.exists(MARKER),
    "marker_in_home": os.path.exists(os.path.join(os.environ["HOME"], os.path.basename(MARKER))),
}))
with open(os.path.join(os.environ["HOME"], "written-inside.txt"), "w") as f:
    f.write("from the kernel")
"""


# The hub


@dataclass
class Hub:
    url: str
    folder: Path
    process: subprocess.Popen
    left: list[str] = field(default_factory=list)  # what did not end when the hub stopped

    def log(self) -> str:
        return (self.folder / "jupyterhub.log").read_text(errors="replace")[-6000:]

    def explain(self, response: requests.Response | None = None) -> str:
        asked = ""
        if response is not None:
            asked = f"{response.request.method} {response.url}: {response.status_code} "
            asked += f"{response.text[:1000]}\n"
        return f"{asked}hub log (end):\n{self.log()}"


@contextlib.contextmanager
def running_hub(site: dict[str, str], password: str) -> Iterator[Hub]:
    """JupyterHub from this Python, with its proxy, in a temporary folder; stopped at the end
    (SIGTERM: it stops the servers and the proxy), what it left recorded, then killed."""
    folder = Path(tempfile.mkdtemp(prefix="ck-hub-"))
    port, api_port, proxy_api_port = free_ports(3)
    env = {
        "PATH": f"{site['CK_HUB_PROXY_BIN']}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "HOME": str(folder),
        "LANG": "C.UTF-8",
        "CONTAINER_KERNEL_USER_ENV": site["CK_HUB_ENV"],
        "CK_HUB_USER": site["CK_HUB_USER"],
        "CK_HUB_PASSWORD": password,
        "CK_HUB_PORT": str(port),
        "CK_HUB_API_PORT": str(api_port),
        "CK_HUB_PROXY_API_PORT": str(proxy_api_port),
    }
    with (folder / "jupyterhub.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    hub = Hub(f"http://127.0.0.1:{port}", folder, process)
    try:
        poll(lambda: _hub_up(hub), 60, hub.explain, "up")
        yield hub
    finally:
        try:
            hub.left = _stop(hub)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _hub_up(hub: Hub) -> bool:
    assert hub.process.poll() is None, f"the hub exited ({hub.process.returncode}):\n{hub.log()}"
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{hub.url}/hub/api/", timeout=5).status_code == 200
    return False


def _stop(hub: Hub) -> list[str]:
    """Stop the hub as an admin would; return what outlived it by 30 s (then killed)."""
    ours = [hub.process.pid]
    with contextlib.suppress(FileNotFoundError, ValueError):
        ours.append(int((hub.folder / "jupyterhub-proxy.pid").read_text()))
    hub.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        hub.process.wait(30)

    def survivors() -> list[int]:  # the hub, its proxy, and whatever still runs in its folder
        return [pid for pid in _pids() if pid in ours or _cwd(pid) == str(hub.folder)]

    poll(lambda: not survivors(), 10, str, "", check=False)
    left = [_describe(pid) for pid in survivors()]
    for pid in survivors():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        hub.process.wait(10)
    return left


# A browser's login, and the user's API token


def log_in(url: str, name: str, password: str) -> requests.Session:
    """Log in through the hub's login form (with its _xsrf), as a browser does."""
    browser = requests.Session()
    form = browser.get(f"{url}/hub/login", timeout=HTTP_TIMEOUT)
    assert form.status_code == 200, form.text[:1000]
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
    assert xsrf, f"no _xsrf in the login form:\n{form.text[:2000]}"
    answer = browser.post(
        f"{url}/hub/login",
        data={"username": name, "password": password, "_xsrf": xsrf.group(1)},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 302, f"login refused ({answer.status_code}): {answer.text[:1000]}"
    return browser


def api_token(browser: requests.Session, url: str, name: str) -> str:
    """A token for the user's API, requested as the hub's token page does."""
    page = browser.get(f"{url}/hub/token", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200, page.text[:1000]
    xsrf = re.search(r'xsrf_token:\s*"([^"]+)"', page.text)
    assert xsrf, f"no xsrf_token in the token page:\n{page.text[:2000]}"
    answer = browser.post(
        f"{url}/hub/api/users/{name}/tokens",
        json={"note": "container-kernel hub test", "expires_in": 600},
        headers={"X-XSRFToken": xsrf.group(1), "Referer": page.url},
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 201, f"no token ({answer.status_code}): {answer.text[:1000]}"
    return answer.json()["token"]


def _server_token(uid: int) -> str:
    """The API token the hub gave the user's server (in the server's environment)."""
    for pid in user_processes(uid, describe=False):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for entry in environ:
                if entry.startswith(b"JUPYTERHUB_API_TOKEN="):
                    return entry.split(b"=", 1)[1].decode()
    raise AssertionError("no process of the user has JUPYTERHUB_API_TOKEN: where is the server?")


# The kernel's websocket (jupyter_server's JSON protocol, no subprotocol)


def execute(ws_url: str, token: str, code: str, timeout: float = 90) -> str:
    """Run `code` in the kernel over its websocket; its stdout (raises on an error)."""
    ws = websocket.create_connection(
        ws_url, header={"Authorization": f"token {token}"}, timeout=timeout
    )
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {
                "msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                "session": uuid.uuid4().hex, "date": datetime.now(timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
            "content": {
                "code": code, "silent": False, "store_history": False, "user_expressions": {},
                "allow_stdin": False, "stop_on_error": True,
            },
        }))  # fmt: skip
        out, errors, replied, idle = [], [], False, False
        deadline = time.monotonic() + timeout
        while not (replied and idle):
            assert time.monotonic() < deadline, f"no reply in {timeout} s; stdout: {out}"
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                out.append(content["text"])
            elif kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        assert not errors, f"the cell raised in the kernel: {errors}"
        return "".join(out)
    finally:
        ws.close()


# Processes and ports


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _uids(pid: int) -> set[int]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return {int(uid) for uid in line.split()[1:]}
    return set()


def _cwd(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/cwd")
    return None


def _describe(pid: int) -> str:
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return f"{pid} {cmdline.strip()}"
    return f"{pid} (gone)"


def user_processes(uid: int, describe: bool = True) -> list:
    """The processes running as `uid` (real, effective, saved or filesystem)."""
    pids = [pid for pid in _pids() if uid in _uids(pid)]
    return [_describe(pid) for pid in pids] if describe else pids


def _kill_all(uid: int) -> None:
    for pid in user_processes(uid, describe=False):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    poll(lambda: not user_processes(uid), 10, str, "", check=False)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def poll(
    condition: Callable[[], object],
    timeout: float,
    explain: Callable[[], str],
    what: str,
    check: bool = True,
) -> object:
    """Wait until `condition()` is true (its value), or `timeout` seconds; then fail (or, with
    check=False, return the false value)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.25)
    if check:
        assert value, f"not {what} after {timeout} s\n{explain()}"
    return value

"""What a user sees: a real JupyterLab server, driven in Debian's headless Chromium.

The container kernel's card in the Launcher opens a notebook whose first cell runs the image's own
Python, and a kernel spec whose image is missing says so in the page within seconds. Screenshots
go to the test's folder and to `$CK_ARTIFACTS` (default: `test-artifacts/` in the repo), whose path
the test prints. Needs /usr/bin/chromium and /usr/bin/chromedriver: `scripts/setup-browser`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from container_kernel.launch.sessions import sessions_root

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING_IMAGE = "/nonexistent/missing.sif"
KERNEL_DISPLAY = "Container bookworm (browser test)"
MISSING_DISPLAY = "Container missing image (browser test)"
CELL = """import os, sys, platform
print(sys.executable)
print(platform.freedesktop_os_release()["PRETTY_NAME"])
print(os.path.exists("/.container-kernel-image"))"""  # typed: each newline is an Enter


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("CK_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running `jupyter lab`: its URL, token, log file and process."""

    def __init__(self, proc: subprocess.Popen, port: int, token: str, log: Path):
        self.proc, self.token, self.log = proc, token, log
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.monotonic()
        self.marks: list[str] = []  # how long each step took, printed at the end

    def mark(self, step: str) -> None:
        self.marks.append(f"{step} {time.monotonic() - self.started:.1f}s")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, method: str, path: str):
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def ready(self) -> bool:
        try:
            self.api("GET", "/api/status")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Shut the kernels down as a user would, then the server (SIGTERM), and end what is left
        of its process group."""
        with contextlib.suppress(OSError):
            if self.proc.poll() is None:
                for kernel in self.api("GET", "/api/kernels"):
                    self.api("DELETE", f"/api/kernels/{kernel['id']}")
        self.proc.terminate()
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            # jupyter_client keeps a kernel whose start failed among its pending kernels; with a
            # kernel still running, the server's stop fails on it ("Kernel does not exist") and
            # never exits. The kernels were shut down above, so this is a fallback: kill it.
            if "Kernel does not exist" in self.log_tail(200).partition("received signal 15")[2]:
                break
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what it started in its process group
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def browser_specs(kernel_spec, jupyter_dirs):
    """The container kernel and one whose image is missing, each with a name found nowhere else."""
    for name, display, config in [
        ("ck-browser", KERNEL_DISPLAY, {}),
        ("ck-browser-missing", MISSING_DISPLAY, {"image": MISSING_IMAGE}),
    ]:
        spec_file = jupyter_dirs["JUPYTER_PATH"] / "kernels" / kernel_spec(name, **config)
        spec_file /= "kernel.json"
        spec = json.loads(spec_file.read_text())
        spec["display_name"] = display
        spec_file.write_text(json.dumps(spec))


@pytest.fixture
def jupyter_lab(browser_specs, jupyter_dirs, tmp_path, monkeypatch):
    """`jupyter lab` from this venv, in the test's Jupyter folders (its own config too), on a free
    port with a random token; stopped at the end, with its kernels."""
    config = tmp_path / "jupyter-config"
    settings = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "Would you like to get notified about official Jupyter news?" toast, no update check.
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.getuid() == 0:
        argv.append("--allow-root")
    log = tmp_path / "jupyter-lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=notebooks,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lab = Lab(proc, port, token, log)
    try:
        deadline = time.monotonic() + 60
        while not lab.ready():
            assert proc.poll() is None, f"jupyter lab exited ({proc.returncode}):\n{lab.log_tail()}"
            assert time.monotonic() < deadline, f"jupyter lab did not answer:\n{lab.log_tail()}"
            time.sleep(0.2)
        lab.mark("server up")
        yield lab
    finally:
        lab.stop()
    assert not list(sessions_root().iterdir()), "kernel sessions left after JupyterLab stopped"


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium and its chromedriver, or a failure that says how to get them."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    assert not missing, (
        f"{' and '.join(missing)} missing: run scripts/setup-browser "
        "(apt-get install chromium chromium-driver)"
    )
    return CHROMIUM


@pytest.fixture
def browser(chromium, tmp_path):
    """Debian's Chromium, headless, through its own chromedriver (Selenium Manager never runs)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in [
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,900",
    ]:
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser on JupyterLab: waits that fail with a screenshot and the server's log."""

    def __init__(self, driver, lab: Lab, folder: Path):
        self.driver, self.lab, self.folder = driver, lab, folder

    def shoot(self, name: str) -> Path:
        """A PNG of the page in the test's folder, copied to the artifacts folder (returned)."""
        png = self.folder / name
        self.driver.save_screenshot(str(png))
        return Path(shutil.copy(png, artifacts_dir() / name))

    def wait(self, what: str, condition, timeout: float = 60):
        """Poll `condition(driver)` until it returns something true; on timeout, fail saying
        `what`, with a screenshot and the end of the server's log."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition)
        except TimeoutException:
            png = self.shoot("browser-failure.png")
            pytest.fail(
                f"{what}: not within {timeout}s (screenshot {png}); "
                f"jupyter lab log:\n{self.lab.log_tail()}"
            )

    def visible(self, css: str):
        """The first displayed element matching `css`, or None."""
        for element in self.driver.find_elements(By.CSS_SELECTOR, css):
            with contextlib.suppress(WebDriverException):  # re-rendered meanwhile
                if element.is_displayed():
                    return element
        return None

    def open_from_launcher(self, display_name: str) -> None:
        """Click the Notebook card of the kernel named `display_name` in the Launcher."""
        card = (
            "//div[contains(@class, 'jp-LauncherCard') and @data-category='Notebook']"
            f"[.//p[normalize-space()='{display_name}']]"
        )
        self.wait(
            f"the Launcher card {display_name!r}",
            lambda d: next((e for e in d.find_elements(By.XPATH, card) if e.is_displayed()), None),
        ).click()


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_jupyterlab_runs_the_container_kernel_and_says_when_its_image_is_missing(
    chromium, jupyter_lab, browser, tmp_path, capsys
):
    lab, page = jupyter_lab, Page(browser, jupyter_lab, tmp_path)
    browser.get(f"{lab.url}/lab?token={lab.token}")
    page.open_from_launcher(KERNEL_DISPLAY)
    lab.mark("launcher")

    # The new notebook: type the cell into its editor and run it with Shift+Enter.
    editor = page.wait(
        "the new notebook's first cell",
        lambda _: page.visible(".jp-NotebookPanel .jp-Cell .jp-InputArea-editor .cm-content"),
    )
    # A cell run before the kernel is connected is dropped: wait for it (a minute, on busy cores).
    page.wait(
        "the kernel to be idle",
        lambda d: f"{KERNEL_DISPLAY} | Idle" in d.find_element(By.ID, "jp-main-statusbar").text,
    )
    lab.mark("kernel idle")
    editor.click()
    editor.send_keys(CELL)
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    output = page.wait(
        "the cell's output",
        lambda _: (
            (out := page.visible(".jp-NotebookPanel .jp-Cell .jp-OutputArea-output"))
            and len(out.text.splitlines()) >= 3  # all three lines (or a traceback)
            and out
        ),
    )
    text = output.text
    lab.mark("output")
    kernel_png = page.shoot("browser-kernel-output.png")
    # The image's Python and OS, and the mark at the image's root (not the host's).
    assert not Path("/.container-kernel-image").exists()
    assert text.splitlines() == ["/usr/bin/python3", "Debian GNU/Linux 12 (bookworm)", "True"], text

    # A second notebook, with the kernel spec whose image is missing: the page says why, at once.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, Keys.SHIFT, "l")  # Launcher
    page.open_from_launcher(MISSING_DISPLAY)
    started = time.monotonic()
    dialog = page.wait(
        f"a message naming {MISSING_IMAGE}",
        lambda _: (
            (found := page.visible(".jp-Dialog-content")) and MISSING_IMAGE in found.text and found
        ),
    )
    elapsed = time.monotonic() - started
    lab.mark("missing-image message")
    message = dialog.text
    missing_png = page.shoot("browser-missing-image.png")
    with capsys.disabled():
        print(
            f"\nscreenshots: {kernel_png} {missing_png}\ntimes: {', '.join(lab.marks)}"
            f"\nmissing-image message: {message!r}"
        )
    assert f"Image not found: {MISSING_IMAGE}" in message
    assert "Traceback" not in message
    assert elapsed < 20, f"the missing image was reported after {elapsed:.0f}s"

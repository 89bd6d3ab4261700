"""The tests' real OCI registry, a pytest plugin (conftest.py's `pytest_plugins`): the session
fixture `registry` runs `scripts/registry up` once, which starts Debian's docker-registry
(distribution 2.8) at https://127.0.0.1:5117 (`CK_REGISTRY_PORT`) with a certificate of a test
CA the machine trusts, and gives a `Registry`: where it is, its access log (one line per HTTP
request, Apache combined format), and `push`, which puts a directory image there with ch-image
(once per version of the image).

A missing docker-registry or ch-image fails the test with the script's message; it is never
skipped (CI installs both: scripts/system-packages --tests).

`ch_image()` runs ch-image as `/usr/bin/python3 $(which ch-image)`: its `#!/usr/bin/env python3`
finds whatever python3 comes first on PATH (pyenv's, a venv's), which lacks Debian's lark and
requests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "registry"
UP_TIMEOUT = 60  # seconds; a first `up` makes the test CA and certificate
PUSH_TIMEOUT = 900  # a first push tars and gzips the whole image
SYSTEM_PYTHON = "/usr/bin/python3"
# A line of the access log: 127.0.0.1 - - [date] "GET /v2/x/manifests/1 HTTP/1.1" 200 528 "" "agent"
REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


def ch_image() -> list[str]:
    """The argv prefix that runs Debian's ch-image with Debian's Python."""
    path = shutil.which("ch-image")
    if path is None:
        pytest.fail("ch-image is missing: apt-get install charliecloud-builders")
    return [SYSTEM_PYTHON, path]


def parse_requests(lines: list[str]) -> list[tuple[str, str, int]]:
    """(method, path, status) of each request line (the query string kept)."""
    found = (REQUEST.search(line) for line in lines)
    return [(m["method"], m["path"], int(m["status"])) for m in found if m]


@dataclass(frozen=True)
class Registry:
    address: str  # 127.0.0.1:5117, as image references name it
    log_path: Path  # the access log: one line per request, emptied when the registry restarts

    def mark(self) -> int:
        """Where the access log ends now: give it to `requests_since`."""
        return self.log_path.stat().st_size

    def requests_since(self, mark: int, name: str | None = None) -> list[str]:
        """The access log's lines written after `mark`: the requests made since, by anyone (the
        script's own checks among them, with the user agent "scripts/registry"). With `name`,
        only those for that repository (paths under /v2/NAME/): other test sessions on this
        machine share the registry, so give each test's image a name of its own."""
        with self.log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            if log.tell() < mark:
                msg = f"{self.log_path} is shorter than the mark: the registry restarted since"
                raise AssertionError(msg)
            log.seek(mark)
            lines = log.read().decode().splitlines()
        if name is not None:
            lines = [line for line in lines if f" /v2/{name}/" in line]
        return lines

    def push(self, image_dir: Path | str, name: str) -> str:
        """Push a directory image as NAME:TAG (`scripts/registry push`: once, unless the image
        changed); return its URI, docker://127.0.0.1:5117/NAME:TAG."""
        out = _run("push", str(image_dir), name, timeout=PUSH_TIMEOUT)
        return out.strip()


def _run(*args: str, timeout: float) -> str:
    try:
        out = subprocess.run(
            [SCRIPT, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SCRIPT} {args[0]} took more than {timeout} s")
    if out.returncode != 0:
        pytest.fail(f"{SCRIPT} {' '.join(args)} failed (exit {out.returncode}):\n{out.stderr}")
    return out.stdout


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The running registry (`scripts/registry up`)."""
    address = _run("up", timeout=UP_TIMEOUT).strip()
    log_path = Path(_run("log-path", timeout=UP_TIMEOUT).strip())
    return Registry(address=address, log_path=log_path)

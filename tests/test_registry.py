"""The test infrastructure for registry images, for real: the registry (scripts/registry,
tests/registry.py) answers over HTTPS with a certificate the machine trusts, serves what
ch-image pushed, and logs every request; ch-image pulls from it into a storage of its own, as
any user can, and ch-run runs the result; the images without ipykernel and without python are
what they say."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from registry import ch_image, parse_requests

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
NAME, TAG = "ck-test/python", "1"


def ch_run(image: Path, *command: str) -> subprocess.CompletedProcess:
    assert shutil.which("ch-run"), "ch-run is missing: apt-get install charliecloud-runtime"
    env = {**os.environ, "USER": os.environ.get("USER") or "ck"}  # ch-run needs one
    return subprocess.run(
        ["ch-run", image, "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def pushed(registry, no_ipykernel_image) -> str:
    return registry.push(no_ipykernel_image, f"{NAME}:{TAG}")


def get(url: str, agent: str, accept: str | None = None):
    """GET with the system's trusted CAs (Python's default context), as `agent`: other test
    sessions share the registry, and the agent tells our lines in its log from theirs."""
    headers = {"User-Agent": agent, **({"Accept": accept} if accept else {})}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)


def agent_lines(registry, mark: int, agent: str) -> list[str]:
    return [line for line in registry.requests_since(mark) if f'"{agent}"' in line]


def test_https_with_the_system_trusted_ca(registry):
    agent = f"ck-test-{os.urandom(4).hex()}"
    mark = registry.mark()
    with get(f"https://{registry.address}/v2/", agent) as response:
        assert response.status == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # The certificate is checked: it names 127.0.0.1, not localhost.
    port = registry.address.rsplit(":", 1)[1]
    with pytest.raises(urllib.error.URLError) as refused:
        get(f"https://localhost:{port}/v2/", agent)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    assert parse_requests(agent_lines(registry, mark, agent)) == [("GET", "/v2/", 200)]


def test_requests_since_a_mark(registry):
    agent = f"ck-test-{os.urandom(4).hex()}"
    mark = registry.mark()
    assert agent_lines(registry, mark, agent) == []
    get(f"https://{registry.address}/v2/_catalog", agent).close()
    (line,) = agent_lines(registry, mark, agent)
    assert '"GET /v2/_catalog HTTP/1.1" 200 ' in line
    assert line in registry.requests_since(mark)
    assert agent_lines(registry, registry.mark(), agent) == []


def test_a_pushed_image_is_served(registry, pushed, no_ipykernel_image):
    assert pushed == f"docker://{registry.address}/{NAME}:{TAG}"
    mark = registry.mark()
    url = f"https://{registry.address}/v2/{NAME}/manifests/{TAG}"
    with get(url, "ck-test", accept=MANIFEST_V2) as response:
        assert response.headers["Content-Type"] == MANIFEST_V2
        manifest = json.load(response)
    assert manifest["schemaVersion"] == 2
    assert len(manifest["layers"]) == 1
    assert ("GET", f"/v2/{NAME}/manifests/{TAG}", 200) in parse_requests(
        registry.requests_since(mark, NAME)
    )
    # A second push of the same image only checks the tag: no upload.
    mark = registry.mark()
    assert registry.push(no_ipykernel_image, f"{NAME}:{TAG}") == pushed
    methods = {method for method, *_ in parse_requests(registry.requests_since(mark, NAME))}
    assert methods <= {"GET", "HEAD"}


def test_ch_image_pulls_a_runnable_image(registry, pushed, tmp_path):
    storage = tmp_path / "storage"  # a storage of its own, as any user's
    reference = f"{registry.address}/{NAME}:{TAG}"
    mark = registry.mark()
    pull = subprocess.run(
        [*ch_image(), "--storage", storage, "--no-cache", "pull", reference],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "USER": os.environ.get("USER") or "ck"},
    )
    assert pull.returncode == 0, pull.stderr
    assert "layer 1/1" in pull.stderr
    image = storage / "img" / reference.replace("/", "%").replace(":", "+")
    ran = ch_run(image, "python3", "-c", "import traitlets; print(traitlets.__version__)")
    assert (ran.returncode, ran.stdout) == (0, "5.5.0\n"), ran.stderr
    # The manifest, then the config's and the layer's blobs, each a GET of its own.
    manifest = json.loads(next((storage / "dlcache").glob("*skinny.manifest.json")).read_text())
    digests = [manifest["config"]["digest"], manifest["layers"][0]["digest"]]
    asked = parse_requests(registry.requests_since(mark, NAME))
    assert ("GET", f"/v2/{NAME}/manifests/{TAG}", 200) in asked
    for digest in digests:
        assert ("GET", f"/v2/{NAME}/blobs/{digest}", 200) in asked


def test_the_image_without_ipykernel(no_ipykernel_image):
    probe = (
        "import importlib.util, traitlets; print(traitlets.__version__, traitlets.__file__,"
        " [m for m in ('ipykernel', 'zmq', 'IPython', 'pip') if importlib.util.find_spec(m)])"
    )
    ran = ch_run(no_ipykernel_image, "python3", "-c", probe)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [
        "5.5.0",
        "/usr/lib/python3/dist-packages/traitlets/__init__.py",
        "[]",
    ]


def test_the_image_without_python(no_python_image):
    ran = ch_run(no_python_image, "sh", "-c", "command -v python3 python; ls /usr/bin")
    assert "python" not in ran.stdout
    assert ran.stdout.count("\n") > 10  # ls listed /usr/bin

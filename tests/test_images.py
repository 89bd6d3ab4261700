"""Registry images pulled once into the image cache (images.py), and images without ipykernel
(kernel_check.py, injection.py): with a real registry (Debian's docker-registry on 127.0.0.1,
tests/registry.py), real ch-image pulls, and the apptainer double's `pull`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager
from kernels import run, running_kernel
from test_cli import container_kernel, jupyter_folders
from test_doctor import lines

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.images import kernel_check

TAG = "ck-images/ipykernel:1"
REGISTRY = str(Path(__file__).resolve().parent.parent / "scripts" / "registry")


@pytest.fixture(scope="module")
def pushed(registry, image) -> str:
    """The test image in the registry (pushed once per machine: cheap when it is there)."""
    return registry.push(image, TAG)


@pytest.fixture
def isolated(tmp_path, monkeypatch, runtime) -> Path:
    """Jupyter folders of the test's own (as test_cli's)."""
    return jupyter_folders(tmp_path, monkeypatch)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "image-cache"


@pytest.fixture
def pulls(caplog):
    """The provisioner's pull lines in the server log."""
    caplog.set_level(logging.INFO)
    return lambda: [r.getMessage() for r in caplog.records if "container-kernel:" in r.getMessage()]


async def test_a_registry_image_is_pulled_once_then_started_from_the_cache(  # noqa: PLR0917
    kernel_spec, notebook_dir, registry, pushed, cache, pulls
):
    """Two kernels started at once pull it once (one says it waits); later starts ask the
    registry nothing, and start with it down. (One pull: they are slow on the double.)"""
    name = kernel_spec(image=pushed, image_cache=str(cache))
    mark = registry.mark()
    managers = [AsyncKernelManager(kernel_name=name) for _ in range(2)]
    gaps = [0.0]

    async def ticker():  # the server's event loop, which every kernel of it shares
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            gaps.append(time.monotonic() - before)

    ticking = asyncio.ensure_future(ticker())
    try:
        await asyncio.gather(*(km.start_kernel(cwd=str(notebook_dir)) for km in managers))
        assert all([await km.is_alive() for km in managers])
    finally:
        ticking.cancel()
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers))
    assert max(gaps) < 2  # never blocked by the pull (seconds) or the wait for it
    blobs = [r for r in registry.requests_since(mark, name="ck-images/ipykernel") if "/blobs/" in r]
    assert blobs, "no pull"
    assert len(blobs) == len(set(blobs))  # each blob fetched once: one pull
    lines = pulls()
    assert sum(f"Pulling {pushed}" in line for line in lines) == 1
    assert sum("Waiting" in line for line in lines) == 1  # the other kernel said it waits
    assert len(lines) > 4  # the runtime's own progress, line by line
    again = registry.mark()
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        assert run(kc, "print(6 * 7)").strip() == "42"
    assert registry.requests_since(again, name="ck-images/ipykernel") == []  # it asked nothing
    subprocess.run([REGISTRY, "down"], check=True)
    try:
        with running_kernel(name, str(notebook_dir)) as (_, kc):
            assert run(kc, "print('offline')").strip() == "offline"
    finally:
        subprocess.run([REGISTRY, "up"], check=True, stdout=subprocess.DEVNULL)


def start_fails(name: str, cwd: str) -> str:
    """The one-line message of a start that fails, and that it came within 5 s."""
    from jupyter_client import KernelManager

    started = time.monotonic()
    km = KernelManager(kernel_name=name)
    with pytest.raises(ContainerKernelError) as failure:
        km.start_kernel(cwd=cwd)
    assert time.monotonic() - started < 5
    return str(failure.value)


def test_an_unreachable_registry_fails_at_once(kernel_spec, notebook_dir, cache):
    name = kernel_spec(image="docker://127.0.0.1:9/ck/none:1", image_cache=str(cache))
    message = start_fails(name, str(notebook_dir))
    assert message.startswith("Cannot reach the registry 127.0.0.1:9")


def test_an_unknown_tag_fails_at_once(kernel_spec, notebook_dir, registry, pushed, cache):
    name = kernel_spec(image=pushed.replace(":1", ":no-such-tag"), image_cache=str(cache))
    message = start_fails(name, str(notebook_dir))
    assert message.startswith("No such image (or no access) in the registry")
    assert not list(cache.glob("refs/*/*"))  # nothing recorded


@pytest.fixture
def tiny_cache(tmp_path):
    if os.getuid() != 0:
        pytest.fail("a tmpfs needs root: this test runs in the root suite")
    folder = tmp_path / "tiny"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_no_space_in_the_cache_fails_at_once_and_leaves_nothing(
    kernel_spec, notebook_dir, pushed, tiny_cache
):
    message = start_fails(kernel_spec(image=pushed, image_cache=str(tiny_cache)), str(notebook_dir))
    assert message.startswith(f"No space left in the image cache {tiny_cache}")
    left = [p for p in tiny_cache.rglob("*") if p.is_file() and "lock" not in p.name]
    assert not [p for p in left if p.suffix in (".sif", ".partial") or "/img/" in str(p)]


def test_an_image_without_ipykernel_gets_one_from_the_host(
    kernel_spec, notebook_dir, no_ipykernel_image, cache
):
    name = kernel_spec(image=str(no_ipykernel_image), image_cache=str(cache))
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        where = run(kc, "import ipykernel, traitlets; print(ipykernel.__file__); "
                        "print(traitlets.__file__, traitlets.__version__)").split("\n")  # fmt: skip
        assert where[0].startswith(kernel_check.INJECTED_MOUNT)
        # the image's own traitlets wins over the one pip would have put beside ipykernel
        assert where[1] == "/usr/lib/python3/dist-packages/traitlets/__init__.py 5.5.0"
        order = "import sys; print(sys.path.index('/usr/lib/python3/dist-packages') < "
        order += f"sys.path.index({kernel_check.INJECTED_MOUNT!r}))"
        assert run(kc, order).strip() == "True"
        km.restart_kernel(now=False)  # (through its standby, which has it too)
        kc.wait_for_ready(timeout=60)
        assert run(kc, "import ipykernel; print(ipykernel.__version__)").strip()


def test_the_image_check_runs_once(kernel_spec, notebook_dir, image, cache, monkeypatch):
    name = kernel_spec(image=str(image), image_cache=str(cache))
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        run(kc, "pass")
    assert list((cache / "checks").iterdir())

    def no_more_probes(*args, **kwargs):
        raise AssertionError("the image was checked again")

    monkeypatch.setattr(kernel_check.probe, "run_in_image", no_more_probes)
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        assert run(kc, "print(1)").strip() == "1"


def test_without_injection_a_missing_ipykernel_says_what_to_do(
    kernel_spec, notebook_dir, no_ipykernel_image, cache
):
    name = kernel_spec(image=str(no_ipykernel_image), image_cache=str(cache), inject_kernel="never")
    message = start_fails(name, str(notebook_dir))
    assert message.startswith("python3 in ")
    assert "has no ipykernel" in message
    assert "inject_kernel" in message


def test_an_image_without_python_says_so(kernel_spec, notebook_dir, no_python_image, cache):
    name = kernel_spec(image=str(no_python_image), image_cache=str(cache))
    message = start_fails(name, str(notebook_dir))
    assert message.startswith(f"python3 does not run in {no_python_image}")


def test_pull_refresh_check_list_clean(isolated, registry, pushed, cache, runtime):
    pulled = container_kernel("pull", pushed, "--image-cache", str(cache))
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith(f"Pulled {pushed}")
    assert f"Pulling {pushed}" in pulled.stderr  # the progress
    # the runtime's own caches are in the image cache too, not in $HOME
    assert any((cache / {"apptainer": "apptainer", "charliecloud": "ch-image"}[runtime]).iterdir())
    mark = registry.mark()
    again = container_kernel("pull", pushed, "--image-cache", str(cache))
    assert "is cached already" in again.stdout
    assert registry.requests_since(mark, name="ck-images/ipykernel") == []
    refreshed = container_kernel("pull", pushed, "--refresh", "--image-cache", str(cache))
    assert refreshed.stdout.startswith(f"Pulled {pushed}")  # a moved tag: asked for
    assert registry.requests_since(mark, name="ck-images/ipykernel")
    digest = _digest(registry, "ck-images/ipykernel", "1")
    pinned = pushed.replace(":1", f"@{digest}")
    assert container_kernel("pull", pinned, "--image-cache", str(cache)).returncode == 0
    mark = registry.mark()
    kept = container_kernel("pull", pinned, "--refresh", "--image-cache", str(cache))
    assert "is cached already" in kept.stdout  # a digest never changes
    assert registry.requests_since(mark, name="ck-images/ipykernel") == []

    # a site's cache, read-only for its users, is used as it is
    shared = json.dumps({"ContainerSettings": {"image_cache_shared": [str(cache)]}})
    (isolated / "config").mkdir(exist_ok=True)
    (isolated / "config" / "jupyter_config.json").write_text(shared)
    own = cache.parent / "own-cache"
    mark = registry.mark()
    checked = container_kernel("check", pushed, "--image-cache", str(own))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    facts = lines(checked)
    assert facts["image"].startswith(f"ok {pushed}, pulled once: {cache}")
    assert facts["kernel"].startswith("ok started")
    assert registry.requests_since(mark, name="ck-images/ipykernel") == []
    listed = container_kernel("cache", "list", "--image-cache", str(own)).stdout
    assert f"{pinned}  " in listed
    assert "(shared, read-only)" in listed
    own_cleaned = container_kernel("cache", "clean", "--all", "--image-cache", str(own)).stdout
    assert "Removed" not in own_cleaned  # (its own image checks only)
    assert pushed in container_kernel("cache", "list", "--image-cache", str(cache)).stdout

    (isolated / "config" / "jupyter_config.json").unlink()
    images_before = _image_files(cache)
    cleaned = container_kernel("cache", "clean", "--image-cache", str(cache)).stdout
    if runtime == "charliecloud":  # the copy --refresh replaced (a kernel might have used it)
        assert _image_files(cache) == images_before - 1
    assert "Freed" in cleaned
    cleaned = container_kernel("cache", "clean", pushed, "--image-cache", str(cache)).stdout
    assert f"Removed {pushed}" in cleaned
    assert [e.name for e in cache.glob("refs/*/*.json")] != []  # the pinned one stays
    container_kernel("cache", "clean", "--all", "--image-cache", str(cache))
    assert not list(cache.glob("refs/*/*.json"))
    assert _image_files(cache) == 0


def _image_files(cache: Path) -> int:
    return len([*cache.glob("sif/*.sif"), *cache.glob("ch-image/img/*")])


def _digest(registry, name: str, tag: str) -> str:
    """The manifest digest the registry gives a tag."""
    request = urllib.request.Request(
        f"https://{registry.address}/v2/{name}/manifests/{tag}", method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers["Docker-Content-Digest"]


@pytest.mark.usefixtures("isolated")
def test_install_and_check_an_image_without_ipykernel(no_ipykernel_image, cache):
    out = container_kernel("install", str(no_ipykernel_image), "--name", "bare",
                           "--image-cache", str(cache))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        "Python: /usr/bin/python3 3.11.2, ipykernel provided from the host at start" in out.stdout
    )
    out = container_kernel("check", "bare")
    assert out.returncode == 0, out.stdout + out.stderr
    facts = lines(out)
    assert facts["ipykernel"].startswith("ok provided from the host at start")
    assert facts["kernel"].startswith("ok started, kernel_info reply in ")


def test_charliecloud_refuses_what_it_cannot_pull(cache):
    from container_kernel.images.cache import ImageCache, local_image
    from container_kernel.runtimes import find_runtime

    runtime = find_runtime("charliecloud")
    with pytest.raises(ContainerKernelError, match=r"^Charliecloud pulls docker:// images"):
        local_image("oras://127.0.0.1:5117/ck/x:1", runtime, ImageCache(cache))


def _plant(shared: Path, reference: str, kind: str, image: Path, mode: int = 0o644) -> Path:
    """A record in `shared` that names `image` for `reference`, as another user could write
    one into a cache folder that everyone may write (1777)."""
    from container_kernel.images.cache import cache_key

    record = shared / "refs" / kind / f"{cache_key(reference)}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    path = os.path.relpath(image, shared)
    record.write_text(json.dumps({"reference": reference, "path": path, "pulled": time.time()}))
    record.chmod(mode)
    return record


@pytest.mark.security
@pytest.mark.parametrize("planted", ["another-users", "writable-by-others", "outside"])
def test_a_shared_cache_entry_that_cannot_be_trusted_is_refused(
    kernel_spec, notebook_dir, tmp_path, runtime, planted
):
    """User B plants a record for a registry name in a shared cache that B can write: A's
    kernel must not run B's image. (Another owner needs root to set up: the other two cases
    run as the unprivileged user too.)"""
    if planted == "another-users" and os.getuid() != 0:
        pytest.skip("giving a file to another user needs root (the other cases run as a user)")
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o1777)
    kind = {"apptainer": "sif", "charliecloud": "ch-image"}.get(runtime, "sif")
    reference = "docker://127.0.0.1:5117/site/python:1"
    planted_image = shared / "planted"
    outside = tmp_path / "elsewhere"
    planted_image.mkdir()
    outside.mkdir()
    if planted == "another-users":
        record = _plant(shared, reference, kind, planted_image)
        for path in (record, record.parent, record.parent.parent, planted_image):
            os.chown(path, 4242, 4242)
        why = "belongs to uid 4242"
    elif planted == "writable-by-others":
        _plant(shared, reference, kind, planted_image, mode=0o666)
        why = "is writable by other users"
    else:
        _plant(shared, reference, kind, outside)
        why = "points outside the cache"
    name = kernel_spec(image=reference, image_cache_shared=[str(shared)],
                       image_cache=str(tmp_path / "own"))  # fmt: skip
    started = time.monotonic()
    refused = pytest.raises(ContainerKernelError, match=f"cannot be trusted .*{why}")
    with refused, running_kernel(name, str(notebook_dir)):
        pass
    assert time.monotonic() - started < 10

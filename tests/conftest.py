"""Shared fixtures: the real test image (built once, cached outside the repo), the apptainer
test double, and isolated Jupyter folders with a kernel spec that uses the provisioner.

`CONTAINER_KERNEL_TEST_IMAGE` names a prebuilt test image to use instead of building one (building
needs root: scripts/test-as-user gives its unprivileged user a copy). `--soak-cycles N` sets how
many lifecycle cycles the soak tests run (`pytest -m soak --soak-cycles 50`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOUBLE_DIR = REPO / "tests" / "apptainer_double"
IMAGE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "container-kernel/images"
)
IMAGE_MARK = ".container-kernel-image"  # what scripts/build-image writes last
pytest_plugins = ["registry"]  # tests/registry.py: the `registry` fixture, a real OCI registry


def pytest_addoption(parser):
    parser.addoption(
        "--soak-cycles",
        type=int,
        default=3,
        metavar="N",
        help="lifecycle cycles per soak test (default 3; e.g. -m soak --soak-cycles 50)",
    )


# A test that uses none of these needs no image, no runtime, no root and no service: it is in
# the fast lane (`make check`, marker `fast`), run first by `make test`.
NEEDS_MORE = frozenset({
    "image", "ipykernel7_image", "no_ipykernel_image", "no_python_image", "r_image",
    "squashfs_image", "apptainer_double", "runtime", "registry", "slurm", "cluster", "server",
    "site", "chromium", "browser",
})  # fmt: skip
SLOW_MARKERS = ("slurm", "soak")


def pytest_collection_modifyitems(config, items):
    for item in items:
        slow = any(item.get_closest_marker(name) for name in SLOW_MARKERS)
        if not slow and not NEEDS_MORE.intersection(item.fixturenames):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def soak_cycles(pytestconfig) -> int:
    cycles = pytestconfig.getoption("--soak-cycles")
    assert cycles >= 1, "--soak-cycles must be at least 1"
    return cycles


@pytest.fixture(scope="session")
def image() -> Path:
    """A Debian root filesystem with its own python3 and ipykernel (scripts/build-image), or
    the prebuilt one `CONTAINER_KERNEL_TEST_IMAGE` names."""
    if prebuilt := os.environ.get("CONTAINER_KERNEL_TEST_IMAGE"):
        path = Path(prebuilt)
        assert (path / IMAGE_MARK).is_file(), (
            f"CONTAINER_KERNEL_TEST_IMAGE={prebuilt} is not a test image (no {IMAGE_MARK})"
        )
        return path
    out = subprocess.run(
        [REPO / "scripts" / "build-image"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"building the test image failed:\n{out.stderr}"
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def ipykernel7_image(image) -> Path:
    """The test image plus ipykernel 7 from PyPI (`scripts/build-image --ipykernel7`): a kernel
    that applies CurveZMQ keys."""
    out = subprocess.run(
        [REPO / "scripts" / "build-image", "--ipykernel7"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHON": sys.executable, "BASE_IMAGE": str(image)},
    )
    assert out.returncode == 0, f"building the ipykernel 7 image failed:\n{out.stderr}"
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def no_ipykernel_image() -> Path:
    """Debian's python3 and python3-traitlets (5.5.0) alone (`scripts/build-image --no-ipykernel`):
    no ipykernel, zmq, IPython or pip; traitlets is the image's own copy of an ipykernel
    dependency."""
    out = subprocess.run(
        [REPO / "scripts" / "build-image", "--no-ipykernel"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"building the image without ipykernel failed:\n{out.stderr}"
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def no_python_image() -> Path:
    """Debian bookworm without any python (`scripts/build-image --no-python`)."""
    out = subprocess.run(
        [REPO / "scripts" / "build-image", "--no-python"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"building the image without python failed:\n{out.stderr}"
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def r_image(image) -> Path:
    """The test image plus Debian's R and IRkernel (`scripts/build-image --r`): two kernels."""
    out = subprocess.run(
        [REPO / "scripts" / "build-image", "--r"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BASE_IMAGE": str(image)},
    )
    assert out.returncode == 0, f"building the R image failed:\n{out.stderr}"
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def squashfs_image(image) -> Path:
    """The test image as one SquashFS file (ch-run mounts it with squashfuse), made once, beside
    the image (or in our cache, when the image's folder is someone else's)."""
    folder = image.parent if os.access(image.parent, os.W_OK) else IMAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    sqfs = folder / f"{image.name}.sqfs"
    if not sqfs.exists() or sqfs.stat().st_mtime < (image / IMAGE_MARK).stat().st_mtime:
        partial = sqfs.with_suffix(".sqfs.partial")
        subprocess.run(
            ["mksquashfs", image, partial, "-comp", "lz4", "-noappend", "-quiet", "-no-progress"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        partial.rename(sqfs)
    return sqfs


@pytest.fixture(scope="session")
def apptainer_double() -> Path:
    return DOUBLE_DIR / "apptainer"


# The real runtimes scripts/real-runtimes builds from ../shared/runtimes (where their build
# scripts install them): test id -> (the `runtime` setting, its bin folder, what --version says).
REAL_RUNTIMES = {
    "apptainer": ("apptainer", "/opt/apptainer/bin", "apptainer version 1.4.5"),
    "singularity-3.4": ("singularity", "/opt/realsing/v3.4/bin", "singularity version 3.4.2"),
    "singularity-2.6": ("singularity", "/opt/realsing/bin", "2.6.1-dist"),
}
REAL_RUNTIMES["apptainer-double"] = ("apptainer", str(DOUBLE_DIR), "")  # what only it can be
RUNTIME_SOURCES = REPO.parent / "shared" / "runtimes"
RUNTIMES_UNDER_TEST = os.environ.get("CK_TEST_RUNTIMES", "apptainer,charliecloud").split(",")


def real_runtime_bin(test_id: str) -> str | None:
    """The bin folder of a built real runtime, None if it is not built here."""
    _, folder, _ = REAL_RUNTIMES[test_id]
    runtime = REAL_RUNTIMES[test_id][0]
    return folder if os.access(f"{folder}/{runtime}", os.X_OK) else None


def pytest_report_header(config):
    found = {name: real_runtime_bin(name) for name in REAL_RUNTIMES if name != "apptainer-double"}
    said = [
        f"{name}: {'real, ' + folder if folder else 'not built'}" for name, folder in found.items()
    ]
    return [f"runtimes under test: {','.join(RUNTIMES_UNDER_TEST)} (CK_TEST_RUNTIMES)", *said]


@pytest.fixture(params=RUNTIMES_UNDER_TEST)
def runtime(request, monkeypatch) -> str:
    """Each integration test runs on each runtime of CK_TEST_RUNTIMES (default: Apptainer and
    ch-run); its value is the `runtime` setting. Apptainer and Singularity are the real ones
    (scripts/real-runtimes builds them); where Apptainer is not built (a clone without
    ../shared), the apptainer test double stands in for it, and the header says so."""
    name = request.param
    if name == "charliecloud":
        assert shutil.which("ch-run"), "ch-run is missing: apt-get install charliecloud-runtime"
        monkeypatch.delenv("USER", raising=False)  # as in CI: the provisioner must cope
        return name
    folder = None if name == "apptainer-double" else real_runtime_bin(name)
    if folder is None and name not in ("apptainer", "apptainer-double"):
        if not RUNTIME_SOURCES.is_dir():  # nothing to build them from: a user's clone
            pytest.skip(f"{name} is not built and {RUNTIME_SOURCES} is missing")
        pytest.fail(f"{name} is not built: run scripts/real-runtimes (as root)")
    folder = folder or str(DOUBLE_DIR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return REAL_RUNTIMES[name][0]


@pytest.fixture
def notebook_dir(tmp_path) -> Path:
    """An empty notebook folder (test modules that need more define their own)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return folder


@pytest.fixture
def real_home_tmp():
    """A folder inside the user's real home, removed afterwards: the place a fake home must hide."""
    path = Path.home() / f".container-kernel-test-{os.getpid()}-{os.urandom(3).hex()}"
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def jupyter_dirs(tmp_path, monkeypatch, real_home_tmp):
    """Isolated Jupyter folders; connection files live under the real home, as by default."""
    dirs = {
        "JUPYTER_PATH": tmp_path / "jupyter-path",
        "JUPYTER_DATA_DIR": tmp_path / "jupyter-data",
        "JUPYTER_RUNTIME_DIR": real_home_tmp / "runtime",
    }
    for variable, path in dirs.items():
        path.mkdir(mode=0o700)
        monkeypatch.setenv(variable, str(path))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return dirs


@pytest.fixture
def kernel_spec(jupyter_dirs, image, runtime):
    """Write a kernel spec running ipykernel in the test image: a function (name, **config)."""

    def write(name: str = "ck-test", **config) -> str:
        folder = jupyter_dirs["JUPYTER_PATH"] / "kernels" / name
        folder.mkdir(parents=True)
        spec = {
            "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({Path(image).name})",
            "language": "python",
            "interrupt_mode": "signal",
            "env": config.pop("spec_env", {}),
            "metadata": {
                "kernel_provisioner": {
                    "provisioner_name": "container-provisioner",
                    "config": {"image": str(image), "runtime": runtime, **config},
                }
            },
        }
        (folder / "kernel.json").write_text(json.dumps(spec))
        return name

    return write

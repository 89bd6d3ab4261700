"""ipykernel injected from the host: tags, the probe snippet, real pip builds against PyPI
(cached under ~/.cache/container-kernel/test-injection, so a machine pays once), and errors."""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import traitlets
from packaging.specifiers import SpecifierSet

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.images.injection import (
    PROBE_SNIPPET,
    RECORD,
    Target,
    failure,
    kernel_site,
    platform_tags,
)

CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "container-kernel"
    / "test-injection"
)
BOOKWORM = Target(python="3.11.2", libc_version="2.36", packages={"traitlets": "5.5.0"})
NOWHERE = "http://127.0.0.1:9/simple"  # nothing listens there
# What PROBE_SNIPPET finds in Debian bookworm's python3-ipykernel, less ipykernel: local versions
# (debugpy) and versions PyPI never had (pure-eval 0.0.0) included.
BOOKWORM_PACKAGES = {
    "asttokens": "2.2.1", "backcall": "0.2.0", "debugpy": "1.6.3+git20221103.a2a3328",
    "decorator": "5.1.1", "entrypoints": "0.4", "executing": "1.2.0", "ipython": "8.5.0",
    "jedi": "0.18.2", "jupyter-client": "7.4.9", "jupyter-core": "4.12.0",
    "matplotlib-inline": "0.1.6", "nest-asyncio": "1.5.4", "packaging": "23.0", "parso": "0.8.3",
    "pexpect": "4.8.0", "pickleshare": "0.7.5", "prompt-toolkit": "3.0.36", "psutil": "5.9.4",
    "ptyprocess": "0.7.0", "pure-eval": "0.0.0", "pygments": "2.14.0", "python-dateutil": "2.8.2",
    "pyzmq": "24.0.1", "six": "1.16.0", "stack-data": "0.6.2", "tornado": "6.2",
    "traitlets": "5.5.0", "wcwidth": "0.2.5",
}  # fmt: skip


def test_tags_glibc_x86_64_go_down_to_manylinux1_with_legacy_aliases():
    tags = platform_tags(BOOKWORM)
    assert tags[:2] == ["manylinux_2_36_x86_64", "manylinux_2_35_x86_64"]
    assert tags.index("manylinux2014_x86_64") == tags.index("manylinux_2_17_x86_64") + 1
    assert tags.index("manylinux2010_x86_64") == tags.index("manylinux_2_12_x86_64") + 1
    assert tags[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert not [tag for tag in tags if tag.startswith("linux_")]


def test_tags_aarch64_stop_at_manylinux2014():
    tags = platform_tags(Target(python="3.12.3", machine="aarch64", libc_version="2.39"))
    assert tags[0] == "manylinux_2_39_aarch64"
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert len(tags) == 39 - 17 + 2


def test_tags_musl():
    target = Target(python="3.12.8", libc="musl", libc_version="1.2")
    assert platform_tags(target) == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64"]
    aarch64 = Target(python="3.12.8", machine="aarch64", libc="musl", libc_version="1.1")
    assert platform_tags(aarch64) == ["musllinux_1_1_aarch64"]


@pytest.mark.parametrize(
    ("libc", "version", "machine"),
    [("", "", "x86_64"), ("glibc", "2.12", "aarch64"), ("musl", "", "x86_64")],
)
def test_no_tags_is_an_error(libc, version, machine):
    target = Target(python="3.11.2", machine=machine, libc=libc, libc_version=version)
    with pytest.raises(ContainerKernelError, match="install ipykernel in the image"):
        platform_tags(target)


def test_snippet_is_python_36_syntax_and_describes_this_interpreter():
    ast.parse(PROBE_SNIPPET, feature_version=(3, 6))
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE_SNIPPET], capture_output=True, text=True, check=True
    )
    assert len(out.stdout.splitlines()) == 1
    target = Target.from_probe(json.loads(out.stdout))
    assert target.python == platform.python_version()
    assert target.implementation == "CPython"
    assert target.machine == platform.machine()
    assert (target.libc, target.libc_version) == ("glibc", platform.libc_ver()[1])
    assert target.packages["traitlets"] == traitlets.__version__
    assert "jupyter-client" in target.packages  # canonical names
    assert platform_tags(target)


def test_snippet_finds_musl_and_its_version(tmp_path):
    loader = tmp_path / "ld-musl-x86_64.so.1"
    loader.write_text(
        "#!/bin/sh\necho 'musl libc (x86_64)' >&2\necho 'Version 1.2.5' >&2\nexit 1\n"
    )
    loader.chmod(0o755)
    musl = (
        "import glob, os, platform\n"
        "def confstr(name):\n    raise ValueError(name)\n"
        f"os.confstr, glob.glob = confstr, lambda pattern: [{str(loader)!r}]\n"
        "platform.libc_ver = lambda: ('', '')\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", musl + PROBE_SNIPPET],
        capture_output=True,
        text=True,
        check=True,
    )
    target = Target.from_probe(json.loads(out.stdout))
    assert (target.libc, target.libc_version) == ("musl", "1.2")
    assert platform_tags(target)[0] == f"musllinux_1_2_{platform.machine()}"


@pytest.fixture(scope="session")
def built() -> Path:
    """ipykernel for Debian bookworm's Python with its traitlets 5.5.0 (built once per machine)."""
    return kernel_site(BOOKWORM, CACHE)


def test_build_respects_the_image_version(built):
    record = json.loads((built / RECORD).read_text())
    assert record["from_image"] == {"traitlets": "5.5.0"}
    assert (built / "ipykernel" / "__init__.py").is_file()
    assert (built / "ipykernel_launcher.py").is_file()
    assert not (built / "traitlets").exists()  # the image's copy is the one imported
    assert not (built / "bin").exists()
    assert not list(built.glob("traitlets-*.dist-info"))
    for info in built.glob("*.dist-info"):  # every requirement on traitlets accepts 5.5.0
        for line in (info / "METADATA").read_text().splitlines():
            if line.startswith("Requires-Dist: traitlets") and ";" not in line:
                spec = line.removeprefix("Requires-Dist: traitlets").strip(" ()")
                assert "5.5.0" in SpecifierSet(spec), (info.name, line)
    assert int(record["installed"]["ipykernel"].split(".")[0]) >= 6


def test_a_debian_image_needs_only_what_it_lacks():
    target = Target(python="3.11.2", libc_version="2.36", packages=BOOKWORM_PACKAGES)
    record = json.loads((kernel_site(target, CACHE) / RECORD).read_text())
    assert record["from_image"]["debugpy"] == "1.6.3+git20221103.a2a3328"  # its own, local version
    assert record["installed"]["ipykernel"].startswith("6.")  # 7 needs a newer jupyter_client
    assert not set(record["installed"]) & set(BOOKWORM_PACKAGES)


def test_second_call_returns_at_once_without_pip(built):
    start = time.monotonic()
    assert kernel_site(BOOKWORM, CACHE, python="/nonexistent/python") == built
    assert time.monotonic() - start < 0.5


FAKE_PIP = """#!{python}
import pathlib, sys, time
site = pathlib.Path(sys.argv[sys.argv.index("--target") + 1])
with open({calls!r}, "a") as calls:
    calls.write("pip\\n")
time.sleep(1)
(site / "ipykernel").mkdir(parents=True)
(site / "ipykernel" / "__init__.py").write_text("")
(site / "ipykernel-7.0.0.dist-info").mkdir()
(site / "bin").mkdir()
print("Collecting ipykernel")
"""


def fake_python(tmp_path: Path) -> tuple[str, Path]:
    """A `python` that acts as pip would, slowly, counting its calls."""
    calls = tmp_path / "calls"
    script = tmp_path / "python"
    script.write_text(FAKE_PIP.format(python=sys.executable, calls=str(calls)))
    script.chmod(0o755)
    return str(script), calls


def test_concurrent_callers_build_once(tmp_path):
    python, calls = fake_python(tmp_path)
    logs: list[list[str]] = [[], []]
    results: list[Path] = []

    def call(lines):
        results.append(kernel_site(BOOKWORM, tmp_path / "c", python=python, log=lines.append))

    first = threading.Thread(target=call, args=(logs[0],))
    first.start()
    time.sleep(0.3)
    call(logs[1])
    first.join()
    assert calls.read_text() == "pip\n"
    assert results[0] == results[1]
    assert logs[1][0].startswith("waiting for another process installing ipykernel for")
    assert "Collecting ipykernel" in logs[0]
    record = json.loads((results[0] / RECORD).read_text())
    assert record["installed"] == {"ipykernel": "7.0.0"}
    assert not (results[0] / "bin").exists()
    assert sorted(p.name for p in results[0].parent.iterdir()) == [
        results[0].name,
        results[0].name + ".lock",
    ]


def assert_no_leftovers(cache: Path) -> None:
    """Only lock files: no half-written or temporary folder."""
    assert [p.name for p in (cache / "kernels").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("pin", ["traitlets==4.0.0", "tornado==4.0"])
def test_a_pin_no_ipykernel_fits_names_the_package(tmp_path, pin):
    name, version = pin.split("==")
    target = Target(python="3.11.2", libc_version="2.36", packages={name: version})
    start = time.monotonic()
    with pytest.raises(ContainerKernelError) as info:
        kernel_site(target, tmp_path)
    assert time.monotonic() - start < 15  # a few small metadata downloads
    message = str(info.value)
    assert message.startswith(f"The image's {name} {version} is too old for any ipykernel")
    assert "Python 3.11 on manylinux_2_36_x86_64" in message
    assert re.search(rf"\(ipykernel 6\.\S+ needs {name}<\d\.0 and >=4\.\d+\.?\d*\)", message)
    assert f"upgrade {name} in the image" in message
    assert "\n" not in message
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize(
    ("version", "age"), [("4.0.0", "too old"), ("6.1.0", "too new"), ("5.0.0", "not usable")]
)
def test_a_conflict_says_whether_the_image_package_is_too_old_or_too_new(version, age):
    pip_output = [
        "ERROR: Cannot install ipykernel because these package versions have conflicting deps.",
        "",
        "The conflict is caused by:",
        "    ipykernel 6.0.3 depends on traitlets<6.0 and >=4.1.0",
        "    ipykernel 6.0.2 depends on traitlets!=5.0.0,<6.0,>=4.1.0",
        f"    The user requested (constraint) traitlets=={version}",
        "",
        "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/...",
    ]
    target = Target(python="3.11.2", libc_version="2.36", packages={"traitlets": version})
    about = "Python 3.11 on manylinux_2_36_x86_64"
    message = failure(
        pip_output, target=target, pins=target.packages, about=about, source={"index": None}
    )
    assert message.startswith(f"The image's traitlets {version} is {age} for any ipykernel")
    assert "(ipykernel 6.0.2 needs traitlets!=5.0.0,<6.0,>=4.1.0)" in message


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (Target(python="3.5.10", libc_version="2.28"), r"Python 3\.5\.10 is too old"),
        (Target(python="3.10.14", implementation="PyPy", libc_version="2.36"), "PyPy"),
        (Target(python="3.11.2", libc=""), "unknown C library"),
    ],
)
def test_hopeless_targets_fail_at_once(tmp_path, target, match):
    start = time.monotonic()
    with pytest.raises(ContainerKernelError, match=match):
        kernel_site(target, tmp_path, python="/nonexistent/python")
    assert time.monotonic() - start < 1
    assert not (tmp_path / "kernels").exists()


def test_network_down_suggests_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's extra indexes
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    start = time.monotonic()
    with pytest.raises(ContainerKernelError) as info:
        kernel_site(BOOKWORM, tmp_path, index_url=NOWHERE)
    assert time.monotonic() - start < 5
    assert str(info.value).startswith("Cannot reach the package index")
    assert "inject_wheels" in str(info.value)
    assert_no_leftovers(tmp_path)


@pytest.fixture(scope="session")
def wheels(built) -> Path:
    """The wheels of the bookworm build, downloaded once (pip download, for offline use)."""
    folder = CACHE / "wheels"
    if not (folder / ".complete").exists():
        installed = json.loads((built / RECORD).read_text())["installed"]
        tags = [arg for tag in platform_tags(BOOKWORM) for arg in ("--platform", tag)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", folder,
             "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
             "--abi", "cp311", *tags, *(f"{n}=={v}" for n, v in installed.items())],
            check=True,
        )  # fmt: skip
        (folder / ".complete").touch()
    return folder


def test_offline_wheels_folder_needs_no_network(tmp_path, monkeypatch, wheels, built):
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("PIP_INDEX_URL", NOWHERE)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    lines: list[str] = []
    site = kernel_site(BOOKWORM, tmp_path, wheels=str(wheels), index_url=NOWHERE, log=lines.append)
    record = json.loads((site / RECORD).read_text())
    assert record["installed"] == json.loads((built / RECORD).read_text())["installed"]
    assert record["source"] == {"find_links": str(wheels)}
    assert not [line for line in lines if "Retrying" in line or "127.0.0.1" in line]


def test_a_wheels_folder_missing_a_wheel_says_so(tmp_path, monkeypatch, wheels):
    partial = tmp_path / "wheels"
    shutil.copytree(wheels, partial, ignore=shutil.ignore_patterns("comm-*"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    start = time.monotonic()
    with pytest.raises(ContainerKernelError) as info:
        kernel_site(BOOKWORM, tmp_path / "cache", wheels=str(partial))
    assert time.monotonic() - start < 5
    assert str(info.value).startswith("No wheel fits comm")
    assert f"`pip download` the wheels into {partial}" in str(info.value)


@pytest.fixture
def tiny_folder(tmp_path):
    """A 512 KiB file system (root only)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_no_space_left_names_the_cache_and_leaves_nothing(tiny_folder, wheels, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ContainerKernelError) as info:
        kernel_site(BOOKWORM, tiny_folder, wheels=str(wheels))
    message = str(info.value)
    assert message.startswith(f"No space left on the device of {tiny_folder / 'kernels'}")
    assert "container-kernel cache clean" in message
    assert_no_leftovers(tiny_folder)

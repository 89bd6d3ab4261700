"""ipykernel from the host side, for an image whose Python lacks it, without changing the image.

The host's pip installs wheels for the image's interpreter (probed: Python version, CPU, C
library) into a cached host folder that goes on `sys.path` after the image's own packages. Those
win at runtime, so pip resolves against them: each is pinned and offered as a stub wheel of that
exact version (metadata only, removed after), and pip downloads only what the image lacks. pip
judges environment markers (`python_version < "3.11"` backports) by the image's values, not its own.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..ground.errors import ContainerKernelError
from ..ground.folders import private_folder, remove_tree

REQUIREMENT = "ipykernel>=6"  # ipykernel 5 lacks the debugger; 4 would "resolve" with anything
MIN_PYTHON = (3, 7)  # what ipykernel 6.0 needs
RECORD = "container-kernel.json"  # written last: a folder holding it is whole
STUB = "CONTAINER_KERNEL_STUB"  # marks a stub's dist-info, removed after the install
LAYOUT = 1  # bump when the folder's contents change for the same inputs
# ipykernel 6/7 and IPython 7-9 with their dependencies and backports: the image's copies of these
# are what the kernel imports, so pip resolves against them.
KERNEL_DISTRIBUTIONS = (  # noqa: SIM905 (shorter as words)
    "appnope asttokens backcall comm debugpy decorator entrypoints exceptiongroup executing "
    "importlib-metadata ipykernel ipython ipython-genutils ipython-pygments-lexers jedi "
    "jupyter-client jupyter-core matplotlib-inline nest-asyncio nest-asyncio2 packaging parso "
    "pexpect pickleshare platformdirs prompt-toolkit psutil ptyprocess pure-eval pygments "
    "python-dateutil pyzmq six stack-data tornado traitlets typing-extensions tzdata wcwidth "
    "zipp"
).split()

PROBE_SNIPPET = r"""
import glob, json, os, platform, re, sys
names, found = set(%r), {}
try:
    from importlib.metadata import distributions
    dists = [(d.metadata["Name"], d.version) for d in distributions()]
except ImportError:
    try:
        import pkg_resources
        dists = [(d.project_name, d.version) for d in pkg_resources.working_set]
    except Exception:
        dists = []
for name, version in dists:  # the first on sys.path is the one imported
    name = re.sub(r"[-_.]+", "-", name or "").lower()
    if name in names and name not in found:
        found[name] = version
try:
    libc, libc_version = "glibc", os.confstr("CS_GNU_LIBC_VERSION").split()[1]
except (AttributeError, IndexError, OSError, ValueError):
    libc, libc_version = platform.libc_ver()
loaders = glob.glob("/lib/ld-musl-*.so.1")
if libc != "glibc" and loaders:  # musl's loader says its version (as packaging asks it)
    import subprocess
    try:
        out = subprocess.Popen(loaders[:1], stderr=subprocess.PIPE).communicate()[1].decode()
    except OSError:
        out = ""
    match = re.search(r"Version (\d+\.\d+)", out)
    libc, libc_version = "musl", match.group(1) if match else ""
machine = platform.machine()
if machine == "x86_64" and sys.maxsize <= 2 ** 32:
    machine = "i686"
print(json.dumps({"python": platform.python_version(), "machine": machine,
                  "implementation": platform.python_implementation(), "libc": libc,
                  "libc_version": libc_version, "packages": found}))
""" % (sorted(KERNEL_DISTRIBUTIONS),)  # noqa: UP031 (the snippet's own braces)

# Runs the host's pip with the image's environment-marker values.
_PIP = """
import json, runpy, sys
env = json.loads(sys.argv.pop(1))
try:
    from pip._vendor.packaging import markers
    host = markers.default_environment
    markers.default_environment = lambda: dict(host(), **env)
except (ImportError, AttributeError):
    pass
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Target:
    """What we know of the image's interpreter: enough to choose wheels for it."""

    python: str
    implementation: str = "CPython"
    machine: str = "x86_64"
    libc: str = "glibc"
    libc_version: str = ""
    packages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_probe(cls, values: dict) -> Target:
        """From PROBE_SNIPPET's JSON line (unknown keys ignored)."""
        texts = ("python", "implementation", "machine", "libc", "libc_version")
        packages = {canonical(str(k)): str(v) for k, v in (values.get("packages") or {}).items()}
        return cls(**{key: str(values.get(key) or "") for key in texts}, packages=packages)

    @property
    def version(self) -> tuple[int, int]:
        parts = [*re.findall(r"\d+", self.python), "0", "0"]
        return int(parts[0]), int(parts[1])


def platform_tags(target: Target) -> list[str]:
    """pip's `--platform` values for the image, best first (no `linux_*`: not portable)."""
    arch = target.machine.replace("-", "_").replace(".", "_")
    major, minor = (int(n) for n in [*re.findall(r"\d+", target.libc_version), "0", "0"][:2])
    tags = []
    if target.libc == "glibc" and major == 2:
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        lowest = 5 if arch in ("x86_64", "i686") else 17
        for n in range(minor, lowest - 1, -1):
            tags.append(f"manylinux_2_{n}_{arch}")
            if n in legacy and (n == 17 or lowest == 5):
                tags.append(f"{legacy[n]}_{arch}")
    elif target.libc == "musl" and major == 1:
        tags = [f"musllinux_1_{n}_{arch}" for n in range(minor, 0, -1)]
    if not tags:
        libc = f"{target.libc} {target.libc_version}".strip() or "an unknown C library"
        msg = (
            f"No ipykernel wheels can fit the image's {libc} on {target.machine}: manylinux "
            "wheels need glibc >= 2.17 (2.5 on x86), musllinux ones musl >= 1.1; install "
            "ipykernel in the image."
        )
        raise ContainerKernelError(msg)
    return tags


def kernel_site(
    target: Target,
    cache_root: Path,
    *,
    wheels: str | None = None,
    index_url: str | None = None,
    log: Callable[[str], None] | None = None,
    python: str = sys.executable,
) -> Path:
    """The host folder holding ipykernel and what it needs beyond the image's own packages,
    installed once for exactly that interpreter (concurrent callers wait for one build)."""
    log = log or (lambda line: None)
    if target.implementation != "CPython":
        msg = f"ipykernel cannot be provided for {target.implementation or 'this Python'}: only "
        raise ContainerKernelError(msg + "CPython wheels are chosen here; install it in the image.")
    if target.version < MIN_PYTHON:
        msg = f"The image's Python {target.python} is too old for ipykernel 6 (Python >= 3.7): "
        raise ContainerKernelError(msg + "install ipykernel in the image, or use a newer Python.")
    tags = platform_tags(target)
    source = {"find_links": str(Path(wheels).absolute())} if wheels else {"index": index_url}
    pins = _pins(target.packages, log)
    key = [LAYOUT, REQUIREMENT, target.version, tags, sorted(pins.items()), source]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    folder = Path(cache_root) / "kernels"
    final = folder / ("cp%d%d-%s-%s" % (*target.version, tags[0], digest))  # noqa: UP031
    if (final / RECORD).is_file():
        return final
    about = "Python %d.%d on %s" % (*target.version, tags[0])  # noqa: UP031
    private_folder(folder)
    with open(folder / f"{final.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process installing ipykernel for {about} into {final}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / RECORD).is_file():
            return final
        for stale in [final, *folder.glob(f".{final.name}.*")]:  # left by a killed build
            if stale.exists():
                remove_tree(stale)
        build = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
        try:
            code, lines = _pip(_pip_argv(target, tags, pins, build, source), build, python, log)
            if code != 0:
                why = failure(lines, target=target, pins=pins, about=about, source=source)
                raise ContainerKernelError(why or no_space(folder))
            record = {"python": target.python, "libc": f"{target.libc} {target.libc_version}",
                      "platforms": tags, "requirement": REQUIREMENT, "source": source,
                      **_tidy(build / "site")}  # fmt: skip
            (build / "site" / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
            (build / "site").rename(final)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise ContainerKernelError(no_space(folder)) from err
        finally:
            shutil.rmtree(build, ignore_errors=True)
    log(f"ipykernel for {about} is in {final}")
    return final


def _pins(packages: dict[str, str], log: Callable[[str], None]) -> dict[str, str]:
    """The image's versions pip can compare (normalised); never its ipykernel (being replaced)."""
    from packaging.version import InvalidVersion, Version

    pins = {}
    for name, version in sorted(packages.items()):
        try:
            pins[name] = str(Version(version))
        except InvalidVersion:
            log(f"the image's {name} has version {version!r}, which pip cannot compare: unpinned")
    pins.pop("ipykernel", None)
    return pins


def _pip_argv(target: Target, tags: list[str], pins: dict, build: Path, source: dict) -> list:
    """pip install for the image's interpreter into `build/site`, the image's versions pinned
    and offered as stubs (`build/stubs`)."""
    (build / "stubs").mkdir()
    x, y = target.version
    abi = f"cp{x}{y}" + ("m" if (x, y) < (3, 8) else "")
    for name, version in pins.items():
        _stub(build / "stubs", name, version, f"cp{x}{y}-{abi}-{tags[0]}")
    (build / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    markers = {
        "implementation_name": "cpython", "platform_python_implementation": "CPython",
        "python_version": f"{x}.{y}", "python_full_version": target.python,
        "implementation_version": target.python, "platform_machine": target.machine,
        "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
    }  # fmt: skip
    argv = ["-c", _PIP, json.dumps(markers), "install", "--target", str(build / "site")]
    argv += ["--python-version", f"{x}.{y}", "--implementation", "cp", "--abi", abi]
    argv += [arg for tag in tags for arg in ("--platform", tag)]
    argv += ["--only-binary=:all:", "--no-compile", "--disable-pip-version-check", "--no-input"]
    argv += ["--no-warn-conflicts", "--no-warn-script-location", "--retries", "2"]
    argv += ["--progress-bar", "off", "-c", str(build / "constraints.txt")]
    argv += ["--find-links", str(build / "stubs")]
    if source.get("find_links"):
        argv += ["--no-index", "--find-links", source["find_links"]]
    elif source.get("index"):
        argv += ["--index-url", source["index"]]
    return [*argv, REQUIREMENT]


def _pip(argv: list[str], build: Path, python: str, log: Callable) -> tuple[int, list[str]]:
    """Run the host's pip, its temporary files in `build`, each line of its output logged."""
    (build / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(build / "tmp"), "PYTHONUNBUFFERED": "1", "PIP_USER": "0"}
    env["PIP_REQUIRE_VIRTUALENV"] = "0"  # a user's pip.conf must not refuse or redirect --target
    lines = []
    with subprocess.Popen(
        [python, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace", env=env,
    ) as pip:  # fmt: skip
        try:
            for line in pip.stdout:
                lines.append(line.rstrip())
                if line.strip():
                    log(line.rstrip())
        finally:
            if pip.poll() is None:
                pip.kill()
    return pip.wait(), lines


def _tidy(site: Path) -> dict[str, dict[str, str]]:
    """Drop the stubs and the host's console scripts; what came from the image, what is here."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    found: dict[str, dict[str, str]] = {"from_image": {}, "installed": {}}
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        stub = (info / STUB).exists()
        found["from_image" if stub else "installed"][canonical(name)] = version
        if stub:
            shutil.rmtree(info)
    return found


def _stub(folder: Path, name: str, version: str, tag: str) -> None:
    """A wheel of metadata only for the image's `name` `version`; the best tag and a build
    number make pip prefer it to the real wheel of that version (which it then never fetches)."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        "WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n",
        STUB: "",
    }
    files["RECORD"] = "".join(f"{info}/{file},,\n" for file in [*files, "RECORD"])
    with zipfile.ZipFile(folder / f"{info[:-10]}-1-{tag}.whl", "w") as wheel:
        for file, text in files.items():
            wheel.writestr(f"{info}/{file}", text)


# What pip's failure to install ipykernel for an image means, in one line that leads with the
# cause: the network, no space, an image package too old (or too new) for any ipykernel, no
# wheel for the image's Python or libc.


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def no_space(folder: Path) -> str:
    return (
        f"No space left on the device of {folder} while installing ipykernel there: free some, "
        "or run `container-kernel cache clean`."
    )


NETWORK = re.compile(
    r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
    r"Failed to establish a new connection[^'\")]*|ProxyError|Max retries exceeded|timed out"
)


def failure(lines: list[str], *, target: Target, pins: dict, about: str, source: dict) -> str:
    """pip's failure as one line that leads with the cause ("": no space left)."""
    text = "\n".join(lines)
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    last = errors[-1] if errors else (lines[-1] if lines else "pip said nothing")
    if "No space left on device" in text or "[Errno 28]" in text:
        return ""
    if (network := NETWORK.search(text)) and not source.get("find_links"):
        return (
            f"Cannot reach the package index to install ipykernel for {about} "
            f"({network.group(0)}): check the network or proxy, or set `inject_wheels` to a "
            "folder of wheels (pip download) for offline clusters."
        )
    block = text.partition("The conflict is caused by:")[2].partition("\n\n")[0]
    conflicts = re.findall(r"(\S+ \S+) depends on ([\w.-]+)(.*)", block)
    # the first image package in the conflict, with the last (oldest, loosest) need of it
    needs = {
        canonical(n): (by, n, spec.strip()) for by, n, spec in conflicts if canonical(n) in pins
    }
    if needs:
        depender, name, spec = next(iter(needs.values()))
        return (
            f"The image's {name} {pins[canonical(name)]} is "
            f"{age(spec, pins[canonical(name)])} for any ipykernel with "
            f"wheels for {about} ({depender} needs {name}{spec}): upgrade {name} in the "
            "image, or install ipykernel in it."
        )
    missing = re.search(r"No matching distribution found for (\S+)", text)
    what = missing.group(1) if missing else "a consistent set of ipykernel's dependencies"
    hint = "install ipykernel in the image"
    if source.get("find_links"):
        hint = f"`pip download` the wheels into {source['find_links']} for it, or {hint}"
    if target.libc == "musl":
        hint = f"many packages publish no musllinux wheels; {hint}"
    return f"No wheel fits {what} for {about} ({last}): {hint}."


def age(spec: str, version: str) -> str:
    """Why `version` misses pip's "<6.0 and >=4.1.0": too old, too new, or else."""
    from packaging.specifiers import InvalidSpecifier, Specifier

    try:
        unmet = [c for c in re.split(r",| and ", spec) if c.strip() and version not in Specifier(c)]
    except InvalidSpecifier:
        unmet = []
    if any(clause.strip().startswith((">", "~=")) for clause in unmet):
        return "too old"
    return "too new" if any(clause.strip().startswith("<") for clause in unmet) else "not usable"

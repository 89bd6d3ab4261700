"""Kernel specs that use the provisioner: small pure layers, as in ipykernel's kernelspec.py.

`kernel_dict` -> `write_kernel_spec` -> `install`; the CLI is a thin layer on top.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import SYSTEM_JUPYTER_PATH, jupyter_data_dir

from ..settings import ContainerSettings

if TYPE_CHECKING:
    from ..images.probe import Facts
    from ..images.shipped_kernels import ImageKernel

PROVISIONER_NAME = "container-provisioner"
MARK = "container_kernel"  # metadata.container_kernel: what we learned and who made the spec
SIF_SUFFIXES = (".sif", ".simg", ".img")
SQUASHFS_SUFFIXES = (".sqfs", ".squashfs")
IMAGE_SUFFIXES = SIF_SUFFIXES + SQUASHFS_SUFFIXES
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")  # JupyterLab's Launcher shows them
# The module an installed spec's argv runs (spec_argv.py), for clients that ignore provisioners.
SPEC_ARGV_MODULE = "container_kernel.faces.spec_argv"
# Specs installed by 0.1 run `-m container_kernel.launcher` (kept: it runs that module).
EARLIER_MODULES = ("container_kernel.launcher",)


def spec_argv(inner: Sequence[str], python: str | None = None) -> list[str]:
    """The argv an installed spec carries: `inner` (the kernel's argv inside) through
    spec_argv.py, run by the absolute path of a Python that has this package (never PATH)."""
    return [
        python or sys.executable, "-m", SPEC_ARGV_MODULE, "--spec-dir", "{resource_dir}",
        "--connection-file", "{connection_file}", "--", *inner,
    ]  # fmt: skip


def command_inside(cmd: Sequence[str]) -> list[str]:
    """The kernel's own argv in a (formatted) spec argv: what follows spec_argv.py's `--`; a
    spec of the first format (the kernel's argv alone) as it is."""
    cmd = list(cmd)
    modules = (SPEC_ARGV_MODULE, *EARLIER_MODULES)
    if len(cmd) > 2 and cmd[1] == "-m" and cmd[2] in modules and "--" in cmd:
        return cmd[cmd.index("--") + 1 :]
    return cmd


def image_kind(path: Path) -> str | None:
    """'SIF file', 'SquashFS file' or 'sandbox folder' (one with /usr or /bin); None otherwise."""
    if path.is_dir():
        has_root = any(os.path.lexists(path / sub) for sub in ("usr", "bin"))
        return "sandbox folder" if has_root else None
    if path.is_file():
        if path.name.endswith(SIF_SUFFIXES):
            return "SIF file"
        if path.name.endswith(SQUASHFS_SUFFIXES):
            return "SquashFS file"
    return None


def non_default_settings(settings: ContainerSettings) -> dict[str, Any]:
    """The shared settings that differ from their defaults: all a kernel.json needs to say."""
    values = {}
    for name, trait in ContainerSettings.class_traits(config=True).items():
        value = getattr(settings, name)
        if name == "home_root" and value == settings._default_home_root():
            continue  # (computed defaults: the user's own folders when the kernel runs)
        if name == "image_cache" and value == settings._default_image_cache():
            continue
        if value != trait.default():
            values[name] = value
    return values


def default_kernel_name(image: str) -> str:
    """`my-image` for `/images/My Image.sif`: a valid, readable kernel spec name."""
    stem = Path(image.rstrip("/")).name
    for suffix in IMAGE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "container"


def kernel_dict(
    settings: ContainerSettings,
    display_name: str = "",
    interpreter: str = "python3",
    facts: Facts | None = None,
    mark: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The kernel.json: ipykernel run by `interpreter` INSIDE the image, through the provisioner,
    or through the launcher its argv names where a client ignores provisioners.

    `facts` (the probe's, None: not probed) turn frozen modules off where ipykernel's own spec
    would, turn the debugger on where the image can debug and declare the encryption its
    ipykernel applies; `mark` goes in the metadata."""
    python_arguments = facts.python_arguments if facts else []
    inner = [interpreter, *python_arguments, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    ours = dict(mark or {})
    if facts:
        ours["probe"] = facts.recorded()
    metadata: dict[str, Any] = {
        "debugger": bool(facts and facts.debugger),
        "kernel_provisioner": {
            "provisioner_name": PROVISIONER_NAME,
            "config": non_default_settings(settings),
        },
    }
    if facts and facts.encryption:
        metadata["supported_encryption"] = facts.encryption
    if ours:
        metadata[MARK] = ours
    return {
        "argv": spec_argv(inner),
        "display_name": display_name or f"Python 3 ({image_label(settings.image)})",
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": metadata,
    }


def image_kernel_dict(
    settings: ContainerSettings,
    found: ImageKernel,
    display_name: str = "",
    mark: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The kernel.json for a kernel spec the image ships (IRkernel's...): its own argv, language
    and metadata, run inside through the provisioner like a Python kernel."""
    own = {k: v for k, v in (found.spec.get("metadata") or {}).items() if k != "kernel_provisioner"}
    metadata = {
        **own,
        "kernel_provisioner": {
            "provisioner_name": PROVISIONER_NAME,
            "config": non_default_settings(settings),
        },
        MARK: {**(mark or {}), "image_kernel": found.path, "image_spec": found.spec},
    }
    shown = found.spec.get("display_name") or found.name
    return {
        "argv": spec_argv(found.argv),
        "display_name": display_name or f"{shown} ({image_label(settings.image)})",
        "language": found.language,
        "interrupt_mode": found.spec.get("interrupt_mode", "signal"),
        "env": dict(found.spec.get("env") or {}),
        "metadata": metadata,
    }


def image_label(image: str) -> str:
    """How display names name an image: its file or folder name."""
    return Path(image.rstrip("/")).name


def logo_files() -> dict[str, bytes]:
    """The Python logos of the host's ipykernel (`ipykernel/resources/`), as its spec has."""
    found = importlib.util.find_spec("ipykernel")
    if not found or not found.submodule_search_locations:
        return {}
    resources = Path(next(iter(found.submodule_search_locations)), "resources")
    return {name: (resources / name).read_bytes() for name in LOGOS if (resources / name).is_file()}


def write_kernel_spec(folder: Path, spec: dict[str, Any], logos: dict | None = None) -> Path:
    """Write the logos (None: Python's), then kernel.json, each file replaced atomically: a
    client listing specs meanwhile sees the old spec or the new one, and a new folder only once
    it is whole."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (logo_files() if logos is None else logos).items():
        _replace_file(folder / name, data)
    _replace_file(folder / "kernel.json", (json.dumps(spec, indent=2) + "\n").encode())
    return folder


def _replace_file(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # readable by all users
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def read_spec(folder: Path) -> dict[str, Any] | None:
    """A folder's kernel.json, or None when it has none that parses."""
    try:
        spec = json.loads((folder / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def installed_unchanged(spec: dict[str, Any], folder: Path, logos: dict | None = None) -> bool:
    """True when `folder` already holds exactly this spec and its logos: nothing to rewrite."""
    if read_spec(folder) != spec:
        return False
    for name, data in (logo_files() if logos is None else logos).items():
        try:
            if (folder / name).read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def kernels_folder(*, user: bool = True, prefix: str | None = None) -> Path:
    """The kernels folder `install` writes to, by jupyter_client's rules."""
    if prefix:
        return Path(prefix, "share", "jupyter", "kernels")
    return Path(jupyter_data_dir() if user else SYSTEM_JUPYTER_PATH[0], "kernels")


def destination(name: str, *, user: bool = True, prefix: str | None = None) -> Path:
    """The folder `install` writes for `name`."""
    return kernels_folder(user=user, prefix=prefix) / name


def install(
    spec: dict[str, Any],
    name: str,
    *,
    user: bool = True,
    prefix: str | None = None,
    logos: dict | None = None,
) -> str:
    """Install through jupyter_client (its folders, its name rules); returns the spec's folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_kernel_spec(Path(tmp, name), spec, logos)
        return KernelSpecManager().install_kernel_spec(
            str(folder), kernel_name=name, user=user and not prefix, prefix=prefix
        )


def is_container_spec(spec: dict[str, Any] | None) -> bool:
    metadata = (spec or {}).get("metadata") or {}
    return (metadata.get("kernel_provisioner") or {}).get("provisioner_name") == PROVISIONER_NAME


def container_specs() -> dict[str, dict[str, Any]]:
    """Installed kernel specs that use the provisioner: name -> {resource_dir, spec}."""
    found = KernelSpecManager().get_all_specs()
    return {
        name: entry for name, entry in sorted(found.items()) if is_container_spec(entry["spec"])
    }


def spec_config(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec["metadata"]["kernel_provisioner"].get("config") or {})


def spec_settings(spec: dict[str, Any], *, site: bool = True) -> ContainerSettings:
    """The settings a kernel of this spec gets: the site's Jupyter config, then the spec's."""
    return ContainerSettings(site=site, **spec_config(spec))


def describe(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One spec as `list` shows it: where its image is, and whether it is still there."""
    spec = entry["spec"]
    config = spec_config(spec)
    image = str(config.get("image", ""))
    exists = None if "://" in image else bool(image) and Path(image).expanduser().exists()
    return {
        "name": name,
        "display_name": spec.get("display_name", ""),
        "runtime": config.get("runtime", "auto"),
        "image": image,
        "image_exists": exists,  # None: a URI, fetched by the runtime
        "synced_from": (spec["metadata"].get(MARK) or {}).get("synced_from"),
        "resource_dir": entry["resource_dir"],
        "spec": spec,
    }

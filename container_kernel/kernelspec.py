"""Kernel specs that use the provisioner: small pure layers, as in ipykernel's kernelspec.py.

`kernel_dict` -> `write_kernel_spec` -> `install`; the CLI is a thin layer on top.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import SYSTEM_JUPYTER_PATH, jupyter_data_dir

from .kernel import spec_argv
from .settings import ContainerSettings

PROVISIONER_NAME = "container-provisioner"


def non_default_settings(settings: ContainerSettings) -> dict[str, Any]:
    """The shared settings that differ from their defaults: all a kernel.json needs to say."""
    values = {}
    for name, trait in ContainerSettings.class_traits(config=True).items():
        value = getattr(settings, name)
        if name == "home_root" and value == settings._default_home_root():
            continue
        if value != trait.default():
            values[name] = value
    return values


def default_kernel_name(image: str) -> str:
    """`my-image` for `/images/My Image.sif`: a valid, readable kernel spec name."""
    stem = Path(image.rstrip("/")).name.removesuffix(".sif").removesuffix(".img")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "container"


def kernel_dict(
    settings: ContainerSettings, display_name: str = "", interpreter: str = "python3"
) -> dict[str, Any]:
    """The kernel.json: ipykernel run by `interpreter` INSIDE the image, through the provisioner,
    or through the launcher its argv names where a client ignores provisioners."""
    return {
        "argv": spec_argv([interpreter, "-m", "ipykernel_launcher", "-f", "{connection_file}"]),
        "display_name": display_name or f"Python 3 ({Path(settings.image.rstrip('/')).name})",
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": PROVISIONER_NAME,
                "config": non_default_settings(settings),
            }
        },
    }


def write_kernel_spec(folder: Path, spec: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
    return folder


def destination(name: str, *, user: bool = True, prefix: str | None = None) -> Path:
    """The folder `install` writes, by jupyter_client's rules."""
    if prefix:
        return Path(prefix, "share", "jupyter", "kernels", name)
    root = jupyter_data_dir() if user else SYSTEM_JUPYTER_PATH[0]
    return Path(root, "kernels", name)


def installed_unchanged(spec: dict[str, Any], folder: Path) -> bool:
    """True when `folder` already holds exactly this spec: a rerun then changes nothing."""
    try:
        return json.loads((folder / "kernel.json").read_text()) == spec
    except (OSError, ValueError):
        return False


def install(
    spec: dict[str, Any], name: str, *, user: bool = True, prefix: str | None = None
) -> str:
    """Install through jupyter_client (its folders, its name rules); returns the spec's folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_kernel_spec(Path(tmp, name), spec)
        return KernelSpecManager().install_kernel_spec(
            str(folder), kernel_name=name, user=user and not prefix, prefix=prefix
        )


def container_specs() -> dict[str, dict[str, Any]]:
    """Installed kernel specs that use the provisioner: name -> {resource_dir, spec}."""
    found = KernelSpecManager().get_all_specs()
    return {
        name: entry
        for name, entry in sorted(found.items())
        if entry["spec"].get("metadata", {}).get("kernel_provisioner", {}).get("provisioner_name")
        == PROVISIONER_NAME
    }


def spec_settings(spec: dict[str, Any]) -> ContainerSettings:
    """The settings a kernel spec's provisioner config describes."""
    config = spec["metadata"]["kernel_provisioner"].get("config", {})
    known = ContainerSettings.class_traits(config=True)
    return ContainerSettings(**{k: v for k, v in config.items() if k in known})

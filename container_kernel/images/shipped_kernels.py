"""The kernel specs an image ships (IRkernel's `ir`, a conda env's `python3`...), read once at
`install` by running /bin/sh in the image with a fixed script (nothing typed goes into it).

Where Jupyter itself would look inside, prefixes first, as jupyter_core orders them: `/opt/*`
(conda, micromamba, a venv) and their envs, then /usr/local, then /usr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..ground.errors import ContainerKernelError, runtime_message
from ..settings import ContainerSettings
from .probe import run_in_image

KERNEL_FOLDERS = (
    "/opt/*/share/jupyter/kernels/*",
    "/opt/*/envs/*/share/jupyter/kernels/*",
    "/usr/local/share/jupyter/kernels/*",
    "/usr/share/jupyter/kernels/*",
)
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")
MARK = "@@container-kernel"  # starts the script's own lines

SCRIPT = f"""
for dir in {" ".join(KERNEL_FOLDERS)}; do
    [ -f "$dir/kernel.json" ] || continue
    echo "{MARK} kernel $dir"
    cat "$dir/kernel.json"
    echo
    for logo in {" ".join(LOGOS)}; do
        [ -f "$dir/$logo" ] || continue
        echo "{MARK} logo $logo"
        base64 "$dir/$logo" 2>/dev/null
    done
done
echo "{MARK} end"
"""


@dataclass(frozen=True)
class ImageKernel:
    """A kernel spec found in the image: its folder's name and path inside, its kernel.json."""

    name: str
    path: str
    spec: dict[str, Any]
    logos: dict[str, bytes] = field(default_factory=dict)

    @property
    def language(self) -> str:
        return str(self.spec.get("language", ""))

    @property
    def is_python(self) -> bool:
        return self.language.lower() == "python"

    @property
    def argv(self) -> list[str]:
        """Its argv as it runs inside: `{resource_dir}` is its folder in the image."""
        return [str(arg).replace("{resource_dir}", self.path) for arg in self.spec["argv"]]


def find_kernels(settings: ContainerSettings) -> list[ImageKernel]:
    """The image's kernel specs, one per folder name (the first found wins, as in Jupyter)."""
    out = run_in_image(settings, ["/bin/sh", "-c", SCRIPT])
    if f"{MARK} end" not in out.stdout:
        msg = (
            f"Cannot look for kernel specs in {settings.image} (/bin/sh does not run there): "
            f"{runtime_message(out.stderr.splitlines()[-6:])}"
        )
        raise ContainerKernelError(msg)
    return _parse(out.stdout)


def _parse(text: str) -> list[ImageKernel]:
    found: dict[str, ImageKernel] = {}
    for block in text.split(f"{MARK} kernel ")[1:]:
        head, _, rest = block.partition("\n")
        spec_text, *logos = rest.split(f"{MARK} logo ")
        spec_text = spec_text.split(f"{MARK} end")[0]
        try:
            spec = json.loads(spec_text)
        except ValueError:
            continue  # a broken kernel.json: Jupyter would skip it too
        if not isinstance(spec, dict) or not isinstance(spec.get("argv"), list) or not spec["argv"]:
            continue
        path = head.strip()
        name = os.path.basename(path).lower()
        if name not in found:
            found[name] = ImageKernel(name, path, spec, _logos(logos))
    return list(found.values())


def _logos(blocks: list[str]) -> dict[str, bytes]:
    logos = {}
    for block in blocks:
        name, _, data = block.partition("\n")
        data = data.split(MARK)[0]
        try:
            logos[name.strip()] = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            continue
    return {name: data for name, data in logos.items() if name in LOGOS and data}

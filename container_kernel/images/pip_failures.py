"""What pip's failure to install ipykernel for an image means, in one line that leads with the
cause: the network, no space, an image package too old (or too new) for any ipykernel, no wheel
for the image's Python or libc."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .injection import Target


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

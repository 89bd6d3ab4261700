"""Fake homes: host folders bound over the home inside, so the real `$HOME` never is."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
from pathlib import Path

from ..ground.folders import private_folder


def home_inside() -> str:
    """The home a runtime gives the user inside: the passwd entry's, not `$HOME`."""
    return pwd.getpwuid(os.getuid()).pw_dir


def private_dir(path: Path) -> Path:
    """Create `path` if missing, mode 0700 (a home holds credentials); keep an existing one."""
    if not path.is_dir():
        private_folder(path)  # (never readable by others, not even a moment)
    return path


def persistent_home_path(home_root: str, kernel_name: str) -> Path:
    """Where the home kept between sessions of one kernel spec lives: its name as it is, or,
    for a name with other characters, a readable form plus a digest of the name itself (so
    "a b", "a_b" and "a+b" never share a home)."""
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", kernel_name) or "default"
    if safe_name != kernel_name:
        safe_name += "-" + hashlib.sha256(kernel_name.encode()).hexdigest()[:8]
    return Path(home_root).expanduser() / safe_name


def persistent_home(home_root: str, kernel_name: str) -> Path:
    """The home kept between sessions of one kernel spec, created if missing."""
    return private_dir(persistent_home_path(home_root, kernel_name))


def temporary_home(session_folder: Path) -> Path:
    """A fresh home in a kernel's or cell's private session folder: it goes with the session."""
    return private_dir(session_folder / "home")


def resolve_home(home: str, home_root: str, kernel_name: str) -> Path | None:
    """The host folder for a `home` setting other than 'temporary': None means no home mount.

    The folder is created before every start: Apptainer silently mounts an empty tmpfs
    in place of a missing one, and what the kernel writes there would vanish.
    """
    if home == "none":
        return None
    if home == "persistent":
        return persistent_home(home_root, kernel_name)
    return private_dir(Path(home).expanduser())

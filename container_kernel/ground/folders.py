"""Folders this package creates: private (0700), also every missing folder on the way to them;
and what identifies a file or folder now (a standby and the image check compare them).

`Path.mkdir(mode=0o700, parents=True)` gives only the last folder that mode; the parents get
the umask's 0755. The first start in a fresh account would then make Jupyter's runtime folder
readable by every local user, and a Jupyter Server started later keeps it and writes its token
there (Jupyter itself makes that folder 0700).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path


def private_folder(path: str | os.PathLike) -> Path:
    """`path`, made (with every missing parent) 0700 if missing; an existing folder as it is."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile (another kernel)
            continue
        folder.chmod(0o700)  # (whatever the umask)
    if not path.is_dir():
        msg = f"{path} is not a folder"
        raise NotADirectoryError(msg)
    return path


def file_identity(*paths: str | Path | None) -> tuple:
    """What changes when a file is replaced or rewritten (for folders: the folder itself)."""
    found = []
    for path in paths:
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        found.append((info.st_ino, info.st_size, info.st_mtime_ns) if info else None)
    return tuple(found)


def folder_identity(*paths: str | Path) -> tuple:
    """Which folders (or files) these paths reach now: a folder replaced, a symlink on the way
    repointed or a path deleted changes it; files written inside do not."""
    found = []
    for path in paths:
        try:
            info = os.stat(path)
            found.append((info.st_dev, info.st_ino))
        except OSError:
            found.append(None)
    return tuple(found)


def cache_root() -> Path:
    """The default image cache: `$XDG_CACHE_HOME/container-kernel`, else
    `~/.cache/container-kernel`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base, "container-kernel")


def read_only_tree(folder: Path) -> None:
    """Every file and folder under `folder` (and it) read-only: a runtime that cannot bind
    read-only (ch-run) then shows it to an unprivileged kernel as it is. `remove_tree` undoes it."""
    for path in [*Path(folder).rglob("*"), Path(folder)]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~0o222)


def remove_tree(path: Path) -> None:
    """`shutil.rmtree`, read-only folders of ours too (read_only_tree)."""

    def writable_again(function, name, _error) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
            function(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=writable_again)
    else:
        shutil.rmtree(path, onerror=writable_again)

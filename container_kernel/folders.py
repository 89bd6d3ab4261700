"""Folders this package creates: private (0700), also every missing folder on the way to them.

`Path.mkdir(mode=0o700, parents=True)` gives only the last folder that mode; the parents get
the umask's 0755. The first start in a fresh account would then make Jupyter's runtime folder
readable by every local user, and a Jupyter Server started later keeps it and writes its token
there (Jupyter itself makes that folder 0700).
"""

from __future__ import annotations

import os
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

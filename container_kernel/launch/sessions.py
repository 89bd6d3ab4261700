"""Sessions: one launch's private host folder, and the mark every process it starts carries.

A kernel (or a `%%container` cell) keeps its private files (the connection-file copy, its /tmp,
a temporary home, the cell's pickles) in a folder of its own under a 0700 root that no container
ever sees, and every process it starts inside carries `CONTAINER_KERNEL_SESSION=<folder name>` in
its environment, new sessions (`setsid`) and daemons included. Ending a session kills every
process of ours that carries the mark and removes the folder. The folder's name starts with its
owner's pid and start time: a session whose owner died (a SIGKILLed server, a killed notebook
kernel) is ended by the next one that starts on the same host (`sweep`: the root may be on a
file system that other hosts share, where a pid means nothing; the name ends with `@<host>`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ground.folders import private_folder

MARKER = "CONTAINER_KERNEL_SESSION"
CREATED = "created"  # in a session's folder: the folders it made elsewhere, one per line
REMOVE_ATTEMPTS = 20


def sessions_root() -> Path:
    """Where sessions live: `<jupyter runtime dir>/container-kernel`, mode 0700. Never bound:
    the runtime folder is not, and the container's /tmp is a session's own."""
    from jupyter_core.paths import jupyter_runtime_dir

    root = private_folder(Path(jupyter_runtime_dir(), "container-kernel"))
    root.chmod(0o700)
    return root


@dataclass(frozen=True)
class Session:
    """A private folder and the mark of the processes started in it.

    A kernel's standby (a second container, pre-started for its next restart) shares its
    folder under a mark of its own, `<name>+<variant>`: a restart kills the last kernel's
    processes (its mark) and spares the standby; `end` kills both."""

    folder: Path
    variant: str = ""

    @classmethod
    def create(cls, root: Path | None = None) -> Session:
        """A new session owned by this process (its folder 0700, with `tmp` and `var_tmp`)."""
        root = root or sessions_root()
        name = f"{os.getpid()}-{_start_time(os.getpid())}-{secrets.token_hex(6)}@{_host()}"
        folder = root / name
        folder.mkdir(mode=0o700)
        for sub in ("tmp", "var_tmp"):
            (folder / sub).mkdir(mode=0o700)
        return cls(folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def mark(self) -> str:
        """What its processes carry: the folder's name, and the variant's if any."""
        return f"{self.name}+{self.variant}" if self.variant else self.name

    def with_variant(self, variant: str) -> Session:
        """The same folder under another mark (see the class)."""
        return Session(self.folder, variant)

    @property
    def tmp(self) -> Path:
        """The container's /tmp, unless the host's is shared."""
        return self.folder / "tmp"

    @property
    def var_tmp(self) -> Path:
        """The container's /var/tmp, unless the host's is shared."""
        return self.folder / "var_tmp"

    @property
    def environment(self) -> dict[str, str]:
        """What to set inside, so that `end` finds every process the launch started."""
        return {MARKER: self.mark}

    def inside_processes(self, pgid: int) -> list[int]:
        """The processes started inside (not the runtime's own) that are in group `pgid`."""
        return [
            pid for pid in marked_processes(self.mark, inside_only=True) if _group_of(pid) == pgid
        ]

    def kill_processes(self) -> int:
        """SIGKILL every process of ours that carries this session's mark; how many."""
        return kill_marked(self.mark)

    def remove_at_end(self, folders: Sequence[str]) -> None:
        """Folders of this session's made outside its own (a runtime's mount points in a shared
        /tmp): `end` removes them too."""
        if folders:
            with open(self.folder / CREATED, "a") as record:
                record.writelines(f"{folder}\n" for folder in folders)

    def end(self) -> None:
        """Kill what the session started under any of its marks, then remove its folder and
        the folders it made elsewhere."""
        kill_marked(self.name, variants=True)
        with contextlib.suppress(OSError):
            for line in (self.folder / CREATED).read_text().splitlines():
                _remove_own_folder(Path(line))
        for _ in range(REMOVE_ATTEMPTS):  # (a process SIGKILLed a moment ago may still write)
            shutil.rmtree(self.folder, ignore_errors=True)
            if not self.folder.exists():
                break
            time.sleep(0.05)


def _remove_own_folder(folder: Path) -> None:
    """`folder` if it is a folder of ours (not a link), and its parent if that is now empty."""
    with contextlib.suppress(OSError):
        info = folder.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.rmdir()  # (only when no other session's is left in it)


def sweep(root: Path | None = None) -> None:
    """End the sessions whose owner process is gone (a crashed server or kernel)."""
    root = root or sessions_root()
    with contextlib.suppress(OSError):
        for folder in root.iterdir():
            name, _, host = folder.name.partition("@")
            owner, _, rest = name.partition("-")
            start, _, _ = rest.partition("-")
            if host == _host() and owner.isdigit() and not _alive(int(owner), start):
                Session(folder).end()


def _host() -> str:
    return socket.gethostname()


def _alive(pid: int, start_time: str) -> bool:
    return _start_time(pid) == start_time


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot ('' if gone): with the pid, it names
    one process for good (pids are reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def marked_processes(mark: str, inside_only: bool = False, variants: bool = False) -> list[int]:
    """Our processes whose environment holds `CONTAINER_KERNEL_SESSION=<mark>` (or, with
    `variants`, `<mark>+<variant>`), and unless `inside_only`, the runtime's own that hold it
    under its prefix (APPTAINERENV_...)."""
    entry = f"{MARKER}={mark}".encode()
    pattern = re.compile(rb"(?:^|_)" + re.escape(entry) + (rb"(?:\+.*)?$" if variants else b"$"))
    uid, me = os.getuid(), os.getpid()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        variables = environ.split(b"\0")
        if any(
            (var.startswith(entry) or not inside_only) and pattern.search(var) for var in variables
        ):
            found.append(int(proc.name))
    return found


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def kill_marked(mark: str, rounds: int = 5, variants: bool = False) -> int:
    """SIGKILL the marked processes, again while new ones appear (a fork during the scan)."""
    killed = 0
    for _ in range(rounds):
        pids = marked_processes(mark, variants=variants)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed

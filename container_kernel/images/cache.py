"""Registry images (docker://, oras://, library://) pulled once into a local cache, then run
from there: later starts never contact the registry (it may be down, it may rate-limit).

Layout under a cache root (setting `image_cache`; `image_cache_shared` adds read-only roots a
site warmed with `container-kernel pull`):

    refs/<kind>/<key>.json   what a reference was pulled to, written last (atomically)
    <kind>/...               each runtime's images (its `cache_kind`), as its `pull` puts them:
      sif/<name>-<key>.sif     Apptainer/Singularity (`pull` to a temporary name, renamed)
      ch-image/img/ck-<key>-*  Charliecloud, in a ch-image storage of the cache's own
    apptainer/, tmp/...      the runtimes' own caches and temporary files (their `cache_folders`:
                             never in $HOME)
    locks/                   one lock per pull: concurrent starts of one image pull it once

The cache is a `runtimes.Store` to the runtimes' pulls: they get its root and its locks, and
never import this module (it imports them).

An image is used only once its record exists, so a half-written pull never is. A tag is looked up
again only on refresh (`container-kernel pull --refresh`); a digest (`@sha256:`) never changes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ground.errors import ContainerKernelError
from ..ground.folders import private_folder
from ..runtimes.base import Progress, Runtime, cannot_pull
from ..runtimes.pulls import cache_key, pull_failure

SCHEMES = ("docker://", "oras://", "library://")


def is_reference(image: str) -> bool:
    """Whether `image` names a registry image rather than a local file or folder."""
    return image.startswith(SCHEMES)


@dataclass(frozen=True)
class Entry:
    """One cached image: where it is, what it came from, when."""

    reference: str
    kind: str  # the runtime's cache_kind: "sif" (Apptainer, Singularity), "ch-image"...
    path: Path
    record: Path
    pulled: float
    writable: bool  # False: a shared cache's (image_cache_shared), used as it is

    def size(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file() and not
                   f.is_symlink())  # fmt: skip


class ImageCache:
    """Pulled images of one user (`root`, writable) and of the site (`shared`, read-only)."""

    def __init__(self, root: str | Path, shared: Sequence[str | Path] = ()) -> None:
        self.root = Path(root).expanduser()
        self.shared = [Path(folder).expanduser() for folder in shared]

    def find(self, reference: str, kind: str) -> Entry | None:
        """The cached image of `reference` for a runtime of `kind`, if any (shared ones first:
        a site's warmed copy saves everyone a pull)."""
        for root in [*self.shared, self.root]:
            record = root / "refs" / kind / f"{cache_key(reference)}.json"
            entry = _read_record(record, root, writable=root == self.root)
            if entry is not None and entry.path.exists():
                if not entry.writable and (why := _untrusted(entry, root)):
                    msg = (
                        f"The shared image cache {root} has a copy of {reference} that cannot "
                        f"be trusted ({why}): not used. Its owner should remove it, or drop "
                        "that folder from image_cache_shared."
                    )
                    raise ContainerKernelError(msg)
                return entry
        return None

    def entries(self) -> list[Entry]:
        """Every cached image, newest first."""
        found = []
        for root in [*self.shared, self.root]:
            for record in sorted((root / "refs").glob("*/*.json")):
                entry = _read_record(record, root, writable=root == self.root)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: -e.pulled)

    @contextlib.contextmanager
    def lock(self, name: str, waiting: str, progress: Progress) -> Iterator[None]:
        """Hold `locks/<name>.lock`; when another process holds it, say so and wait."""
        folder = self.root / "locks"
        private_folder(folder)
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress(waiting)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def remember(self, reference: str, kind: str, path: Path) -> Entry:
        """Write the record that makes a whole pull usable (atomically, last)."""
        record = self.root / "refs" / kind / f"{cache_key(reference)}.json"
        private_folder(record.parent)
        values = {"reference": reference, "path": str(path.relative_to(self.root)),
                  "pulled": time.time()}  # fmt: skip
        partial = record.with_name(f".{record.name}.{os.getpid()}")
        partial.write_text(json.dumps(values, indent=1) + "\n")
        partial.replace(record)
        return _read_record(record, self.root, writable=True)

    def remove(self, entry: Entry) -> int:
        """Forget one image of the writable cache and free its space; the bytes freed."""
        size = entry.size()
        entry.record.unlink(missing_ok=True)
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        return size


def is_pinned(reference: str) -> bool:
    """A digest reference names one image for good: it is never pulled again."""
    return "@sha256:" in reference


def local_image(
    reference: str,
    runtime: Runtime,
    cache: ImageCache,
    *,
    refresh: bool = False,
    pull_args: Sequence[str] = (),
    progress: Progress = lambda line: None,
) -> Entry:
    """The cached copy of a registry image for `runtime`, pulled first if needed (or if
    `refresh`, unless pinned by digest). Concurrent callers pull once: the others wait."""
    kind = runtime.cache_kind
    if kind is None:
        raise ContainerKernelError(cannot_pull(runtime, reference))
    refresh = refresh and not is_pinned(reference)
    if not refresh and (entry := cache.find(reference, kind)):
        return entry
    try:
        waiting = f"Waiting: another process is pulling {reference} into {cache.root}."
        with cache.lock(f"{kind}-{cache_key(reference)}", waiting, progress):
            if not refresh and (entry := cache.find(reference, kind)):  # pulled meanwhile
                return entry
            progress(f"Pulling {reference} into {cache.root} (once: later starts use it).")
            path = runtime.pull(reference, cache, pull_args, progress)
            return cache.remember(reference, kind, path)
    except OSError as err:  # the cache folder itself
        if err.errno == errno.ENOSPC:
            msg = pull_failure(reference, ["no space left"], cache.root)
            raise ContainerKernelError(msg) from None
        msg = (
            f"Cannot use the image cache {cache.root} ({err.strerror}: {err.filename}): set "
            "image_cache to a folder of yours."
        )
        raise ContainerKernelError(msg) from None


def _untrusted(entry: Entry, root: Path) -> str | None:
    """Why a shared cache's entry cannot be trusted, if it cannot: another user than the
    cache's owner, root or we could have written the record or the image (a cache that others
    may write, such as a 1777 folder, lets them plant either), or the record points outside."""
    real_root = os.path.realpath(root)
    image = os.path.realpath(entry.path)
    if os.path.commonpath([real_root, image]) != real_root:
        return f"its record points outside the cache, to {image}"
    trusted = {0, os.getuid(), os.stat(root).st_uid}
    checked = [entry.record, entry.record.parent, entry.record.parent.parent, Path(image)]
    checked += [Path(folder) for folder in _folders_between(real_root, image)]
    for path in checked:
        info = os.lstat(path)
        if info.st_uid not in trusted:
            return f"{path} belongs to uid {info.st_uid}"
        if info.st_mode & 0o022 and not stat.S_ISLNK(info.st_mode):
            return f"{path} is writable by other users"
    return None


def _folders_between(root: str, path: str) -> list[str]:
    """The folders from below `root` down to `path`'s parent."""
    parts = Path(path).relative_to(root).parts[:-1]
    return [os.path.join(root, *parts[: i + 1]) for i in range(len(parts))]


def _read_record(record: Path, root: Path, *, writable: bool) -> Entry | None:
    try:
        values = json.loads(record.read_text())
        return Entry(
            reference=values["reference"],
            kind=record.parent.name,
            path=root / values["path"],
            record=record,
            pulled=float(values["pulled"]),
            writable=writable,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None

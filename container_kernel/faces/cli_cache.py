"""`container-kernel pull` and `container-kernel cache list|clean`: the image cache by hand.

An admin warms a shared cache once (`pull --image-cache /shared/cache docker://...`; users list
it in `image_cache_shared`); a user frees space (`cache clean`). The same settings as every face:
the site's Jupyter config, then the flags.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from ..images import cache as images
from ..launch.plan import local_image
from ..runtimes import find_runtime
from ..settings import ContainerSettings
from .cli_arguments import settings_from_arguments

# What `cache clean --all` empties besides the images: the runtimes' caches and temporary
# files, the ipykernel installed for images without one, the image checks.
OTHER_FOLDERS = ("apptainer", "tmp", "kernels", "checks")
# The settings these commands take on the command line (the site's config gives the rest).
CACHE_SETTINGS = frozenset({"runtime", "runtime_path", "image_cache", "pull_args"})


def _settings(args: argparse.Namespace) -> ContainerSettings:
    return ContainerSettings(**settings_from_arguments(args))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pull_first(settings: ContainerSettings) -> None:
    """A registry image is pulled before a command runs it, its progress on stderr."""
    if images.is_reference(settings.image):
        local_image(settings, _stderr)


def cmd_pull(args: argparse.Namespace) -> int:
    """Pull IMAGE into the cache now (again with --refresh, unless pinned by digest)."""
    if not images.is_reference(args.image):
        print(f"{args.image} is not a registry image (docker://, oras://, library://).")
        return 1
    settings = _settings(args)
    settings.image = args.image
    runtime = find_runtime(settings.runtime, settings.runtime_path)
    cache = images.ImageCache(settings.image_cache, settings.image_cache_shared)
    refresh = args.refresh and not images.is_pinned(args.image)
    if not refresh and (entry := cache.find(args.image, runtime.cache_kind)):
        again = "a digest never changes" if args.refresh else "--refresh pulls it again"
        print(f"{args.image} is cached already: {entry.path} (pulled {_when(entry.pulled)}; "
              f"{again}).")  # fmt: skip
        return 0
    entry = images.local_image(
        args.image, runtime, cache, refresh=refresh, pull_args=settings.pull_args,
        progress=_stderr,
    )  # fmt: skip
    print(f"Pulled {args.image}: {entry.path} ({_size(entry.size())}).")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cache = images.ImageCache(settings.image_cache, settings.image_cache_shared)
    if args.action == "list":
        return _list(cache)
    return _clean(cache, args.images, everything=args.all)


def _list(cache: images.ImageCache) -> int:
    entries = cache.entries()
    if not entries:
        print(f"No pulled images in {cache.root}.")
    for entry in entries:
        shared = "" if entry.writable else " (shared, read-only)"
        print(f"{entry.reference}  {_size(entry.size())}  {entry.kind}  pulled "
              f"{_when(entry.pulled)}  {entry.path}{shared}")  # fmt: skip
    for name in OTHER_FOLDERS:
        folder = cache.root / name
        if folder.is_dir() and (size := _folder_size(folder)):
            print(f"[{name}]  {_size(size)}  {folder}")
    return 0


def _clean(cache: images.ImageCache, references: list[str], everything: bool) -> int:
    """Remove the named images, else what no record names (old copies left by --refresh, the
    remains of a pull that was killed); with --all, the whole cache. A pull under way is left
    alone, and shared caches are never touched."""
    freed = 0
    for entry in cache.entries():
        if entry.writable and (everything or entry.reference in references):
            freed += cache.remove(entry)
            print(f"Removed {entry.reference} ({entry.path}).")
    if everything:
        for name in ("sif", "ch-image", "refs", "locks", *OTHER_FOLDERS):
            freed += _remove(cache.root / name)
    elif not references:
        freed += _unnamed(cache)
    print(f"Freed {_size(freed)} in {cache.root}.")
    return 0


def _unnamed(cache: images.ImageCache) -> int:
    """Free what no record names, but the files of a pull under way."""
    freed = 0
    named = {entry.path for entry in cache.entries() if entry.writable}
    for path in (cache.root / "sif").glob("*") if (cache.root / "sif").is_dir() else ():
        if path not in named and not _being_written(path):
            freed += _remove(path)
    storage = cache.root / "ch-image" / "img"
    if storage.is_dir():  # (ch-image pulls hold this lock)
        with cache.lock("ch-image-storage", "Waiting for a ch-image pull to end.", _stderr):
            for path in storage.iterdir():
                if path not in named:
                    freed += _remove(path)
    return freed


def _being_written(path: Path) -> bool:
    """Ours (`.NAME.PID.partial`) while its process lives; the runtime's temporary files
    (`tmp-copy-N`...) for an hour."""
    if path.name.endswith(".partial"):
        owner = path.name.rsplit(".", 2)[-2]
        return owner.isdigit() and _alive(int(owner))
    return not path.name.endswith(".sif") and time.time() - path.lstat().st_mtime < 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> int:
    size = _folder_size(path) if path.is_dir() else path.stat().st_size if path.exists() else 0
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return size


def _folder_size(folder: Path) -> int:
    return sum(f.lstat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def add_commands(commands, add_settings_arguments) -> None:
    """`pull` and `cache` in the CLI's subcommands."""
    pull = commands.add_parser(
        "pull", help="Pull a registry image into the image cache.",
        description="Pull IMAGE (docker://, oras://, library://) into the image cache, so that "
        "kernels start from the local copy and never contact the registry. A tag that moved "
        "is pulled again only with --refresh; a digest (@sha256:...) never.",
    )  # fmt: skip
    pull.add_argument("image", metavar="IMAGE", help="A registry image, e.g. docker://python:3.12")
    pull.add_argument("--refresh", action="store_true", help="Pull it again (a moved tag).")
    add_settings_arguments(pull.add_argument, only=CACHE_SETTINGS)
    pull.set_defaults(run=cmd_pull)

    cache = commands.add_parser(
        "cache", help="List or clean the image cache.",
        description="list: the pulled images and the other folders of the cache, with sizes. "
        "clean: remove the named images, or with none named what no image record names "
        "(old copies, failed pulls); --all empties the cache. Shared caches are never cleaned.",
    )  # fmt: skip
    cache.add_argument("action", choices=("list", "clean"))
    cache.add_argument("images", nargs="*", metavar="IMAGE", help="clean: these images only.")
    cache.add_argument("--all", action="store_true", help="clean: everything in the cache.")
    add_settings_arguments(cache.add_argument, only=CACHE_SETTINGS)
    cache.set_defaults(run=cmd_cache)

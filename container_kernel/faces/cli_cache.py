"""`container-kernel pull` and `container-kernel cache list|clean`: the image cache by hand.

An admin warms a shared cache once (`pull --image-cache /shared/cache docker://...`; users list
it in `image_cache_shared`); a user frees space (`cache clean`). The same settings as every face:
the site's Jupyter config, then the flags.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..ground.folders import remove_tree
from ..images import cache as images
from ..images.resolve import local_image
from ..runtimes.base import Runtime
from ..runtimes.registry import find_runtime, runtime_classes
from ..settings import ContainerSettings
from .cli_arguments import settings_from_arguments

# What `cache clean --all` empties besides the images and the runtimes' own caches and
# temporary files (their `cache_folders`): the ipykernel installed for images without one, the
# image checks.
OTHER_FOLDERS = ("kernels", "checks")
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
    for name in (*_runtime_folders(), *OTHER_FOLDERS):
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
        images = [runtime.cache_kind for runtime in _pullers()]
        for name in (*images, "refs", "locks", *_runtime_folders(), *OTHER_FOLDERS):
            freed += _remove(cache.root / name)
    elif not references:
        freed += _unnamed(cache)
    print(f"Freed {_size(freed)} in {cache.root}.")
    return 0


def _unnamed(cache: images.ImageCache) -> int:
    """Free what no record names, but the files of a pull under way (each runtime knows its
    own)."""
    named = {entry.path for entry in cache.entries() if entry.writable}
    return sum(runtime.clean(cache, named, _remove, _stderr) for runtime in _pullers())


def _pullers() -> list[type[Runtime]]:
    """One registered runtime per kind of pulled image (Singularity's are Apptainer's)."""
    found: dict[str, type[Runtime]] = {}
    for runtime in runtime_classes():
        if runtime.cache_kind:
            found.setdefault(runtime.cache_kind, runtime)
    return list(found.values())


def _runtime_folders() -> list[str]:
    """The registered runtimes' own caches and temporary files under a cache's root."""
    return list(dict.fromkeys(name for runtime in runtime_classes() for name in
                              runtime.cache_folders))  # fmt: skip


def _remove(path: Path) -> int:
    size = _folder_size(path) if path.is_dir() else path.stat().st_size if path.exists() else 0
    if path.is_dir():
        remove_tree(path)  # (a provided ipykernel is read-only)
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

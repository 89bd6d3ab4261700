"""The image a start runs, as a local path: every placement and check asks here, once per start.
A path is checked (one line when it is missing); a registry reference comes from the image cache,
pulled once (cache.py)."""

from __future__ import annotations

from pathlib import Path

from ..ground.errors import ContainerKernelError
from ..runtimes.base import Progress, Runtime
from ..runtimes.registry import find_runtime
from ..settings import ContainerSettings
from .cache import ImageCache, is_reference
from .cache import local_image as pull_once


def check_image(image: str) -> str:
    """A local image must exist (a URI is left to the runtime); returns its absolute path."""
    if "://" in image:
        return image
    if not image:
        msg = "No image: set `image` to a SIF file or an image directory."
        raise ContainerKernelError(msg)
    path = Path(image).expanduser().absolute()
    if not path.exists():
        msg = f"Image not found: {path}. Set `image` to an existing SIF file or image directory."
        raise ContainerKernelError(msg)
    return str(path)


def local_image(
    settings: ContainerSettings, progress: Progress | None = None, runtime: Runtime | None = None
) -> str:
    """The image to run, as a local path: a local one as it is (checked), a registry one from
    the cache (pulled once by `runtime`, found if not given; its progress to `progress`)."""
    if not is_reference(settings.image):
        return check_image(settings.image)
    runtime = runtime or find_runtime(settings.runtime, settings.runtime_path)
    cache = ImageCache(settings.image_cache, settings.image_cache_shared)
    entry = pull_once(
        settings.image, runtime, cache, pull_args=settings.pull_args, progress=progress or _quiet
    )
    return str(entry.path)


def _quiet(line: str) -> None:
    """No one to show a pull's progress to."""

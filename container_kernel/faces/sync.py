"""`container-kernel sync DIR`: one kernel spec per image in a site's image folder, kept in step
by cron: new images get a spec, changed settings update it, a deleted image takes its spec along.

Only specs that sync made (metadata.container_kernel.synced_from) are ever updated or removed,
and one sync at a time touches a kernels folder (an flock beside the specs). Each file is
replaced atomically, so a JupyterLab listing kernels meanwhile sees the old spec or the new one.
Images are not run unless `--check` asks: what an earlier check learned (frozen modules off, the
debugger) is kept while the image file stays the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ground.errors import ContainerKernelError
from ..images.probe import Facts
from ..images.shipped_kernels import ImageKernel
from ..settings import ContainerSettings
from . import install as installer
from . import kernelspecs as kernelspec
from .kernelspecs import command_inside, image_kind

LOCK_FILE = ".container-kernel-sync.lock"
DRY_RUN_VERBS = {"added": "would add", "updated": "would update", "removed": "would remove"}


def find_images(folder: Path) -> list[Path]:
    """The images directly in `folder`, by name; hidden entries (images being copied) skipped."""
    return sorted(
        entry for entry in folder.iterdir() if not entry.name.startswith(".") and image_kind(entry)
    )


@dataclass(frozen=True)
class Sync:
    """One sync of `folder` into `kernels` with the settings `flags` (command-line values)."""

    folder: Path
    kernels: Path
    flags: dict[str, Any]
    interpreter: str | None = None  # None: every kernel an image has (with --check)
    check: bool = False
    dry_run: bool = False

    def run(self, say: Callable[[str], None] = print) -> int:
        """Bring the specs in step with the images, saying one line per spec; 1 if a check
        failed (its spec is left as it was), else 0."""
        if not self.folder.is_dir():
            msg = f"No image folder {self.folder}: nothing synced, nothing removed."
            raise ContainerKernelError(msg)
        ContainerSettings(image=str(self.folder), **self.flags)  # bad flags: before any change
        failed = False
        with self._locked():
            existing = self._existing_specs()
            ours = {name for name, spec in existing.items() if self._made_by_us(spec)}
            seen: set[str] = set()
            for image in find_images(self.folder):
                try:
                    entries = self._specs(image, existing)
                except ContainerKernelError as err:
                    name = kernelspec.default_kernel_name(str(image))
                    seen.add(name)
                    say(f"{'failed':12} {name:24} {err}")
                    failed = True
                    continue
                for name, spec, logos in entries:
                    if name in seen:
                        say(f"{'skipped':12} {name:24} {image}: another image here has this name")
                        continue
                    seen.add(name)
                    if name in existing and name not in ours:
                        say(
                            f"{'skipped':12} {name:24} {image}: a kernel spec of that name not "
                            "made by this sync is installed; remove it or rename the image"
                        )
                        continue
                    self._put(name, spec, logos, new=name not in existing, image=image, say=say)
            if not seen and ours:  # an unmounted file system looks like this: keep everything
                say(f"{'kept':12} {len(ours)} specs: {self.folder} holds no image (not mounted?)")
                return 1
            for name in sorted(ours - seen):
                self._act("removed", name, "(its image is gone)", say)
                if not self.dry_run:
                    self._remove(self.kernels / name)
        return 1 if failed else 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One sync at a time per kernels folder (cron runs may overlap): the next one waits."""
        if self.dry_run:  # changes nothing, creates no lock file either
            yield
            return
        self.kernels.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.kernels / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _existing_specs(self) -> dict[str, dict[str, Any]]:
        if not self.kernels.is_dir():
            return {}
        found = {}
        for child in self.kernels.iterdir():
            spec = kernelspec.read_spec(child) if child.is_dir() else None
            if spec is not None:
                found[child.name] = spec
        return found

    def _made_by_us(self, spec: dict[str, Any]) -> bool:
        mark = (spec.get("metadata") or {}).get(kernelspec.MARK) or {}
        return mark.get("synced_from") == str(self.folder)

    def _specs(self, image: Path, existing: dict[str, dict]) -> list[tuple[str, dict, Any]]:
        """(name, spec, logos) for each kernel of `image`: every kernel it has, with --check (see
        installer.py); else what an earlier check of this same file (same mtime) learned, or the
        Python kernel alone, not run."""
        settings = ContainerSettings(image=str(image), site=False, **self.flags)  # (none baked in)
        mtime = image.stat().st_mtime_ns
        mark: dict[str, Any] = {"synced_from": str(self.folder), "image_mtime": mtime}
        base = kernelspec.default_kernel_name(str(image))
        if self.check:
            effective = ContainerSettings(image=str(image), **self.flags)
            planned = installer.plan_kernels(
                settings, effective, interpreter=self.interpreter, say=lambda _: None
            )
            for item in planned:
                metadata = item.spec["metadata"]
                metadata[kernelspec.MARK] = {**metadata.get(kernelspec.MARK, {}), **mark}
            return [
                (installer.spec_name(base, p.kernel, planned), p.spec, p.logos) for p in planned
            ]
        earlier = {
            name: spec for name, spec in existing.items()
            if self._made_by_us(spec) and kernelspec.spec_config(spec).get("image") == str(image)
            and (spec["metadata"].get(kernelspec.MARK) or {}).get("image_mtime") == mtime
        }  # fmt: skip
        if not earlier:
            del mark["image_mtime"]  # nothing learned from this file
            spec = kernelspec.kernel_dict(settings, "", self.interpreter or "python3", None, mark)
            return [(base, spec, None)]
        return [(name, *self._again(settings, name, spec, mark)) for name, spec in earlier.items()]

    def _again(self, settings: ContainerSettings, name: str, spec: dict, mark: dict):
        """A spec an earlier check made, with today's settings (and its logos)."""
        before = spec["metadata"][kernelspec.MARK]
        if isinstance(before.get("image_spec"), dict):  # a kernel the image ships
            path = str(before.get("image_kernel", ""))
            logos = {n: (self.kernels / name / n).read_bytes() for n in kernelspec.LOGOS
                     if (self.kernels / name / n).is_file()}  # fmt: skip
            found = ImageKernel(os.path.basename(path), path, before["image_spec"], logos)
            return kernelspec.image_kernel_dict(settings, found, mark=mark), logos
        facts = Facts.from_dict(before["probe"]) if isinstance(before.get("probe"), dict) else None
        interpreter = command_inside(spec["argv"])[0]
        return kernelspec.kernel_dict(settings, "", interpreter, facts, mark), None

    def _put(self, name: str, spec: dict, logos, *, new: bool, image: Path, say) -> None:
        folder = self.kernels / name
        if not new and kernelspec.installed_unchanged(spec, folder, logos):
            say(f"{'unchanged':12} {name:24} {image}")
            return
        self._act("added" if new else "updated", name, str(image), say)
        if not self.dry_run:
            kernelspec.write_kernel_spec(folder, spec, logos)

    def _act(self, verb: str, name: str, detail: str, say) -> None:
        shown = DRY_RUN_VERBS[verb] if self.dry_run else verb
        say(f"{shown:12} {name:24} {detail}")

    @staticmethod
    def _remove(folder: Path) -> None:
        """kernel.json first: the spec disappears at once, then its folder."""
        with contextlib.suppress(FileNotFoundError):
            (folder / "kernel.json").unlink()
        shutil.rmtree(folder, ignore_errors=True)

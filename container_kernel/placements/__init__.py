"""Where a container runs: here, or as a Slurm job. Every face gets its placement from
`placement_for`, and drives it through the one interface of base.py."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtimes.base import Progress
    from ..settings import ContainerSettings
    from .base import Placement

# The `placement` setting's values and their classes, imported when asked for (a local kernel
# never loads the Slurm side). A new scheduler: a Placement subclass, one line here.
PLACEMENTS = {
    "local": "container_kernel.placements.here:Here",
    "slurm": "container_kernel.placements.slurm:Slurm",
}


def placement_for(
    settings: ContainerSettings, name: str, language: str = "", progress: Progress | None = None
) -> Placement:
    """The placement the settings ask for, for the kernel (spec) or cell `name`."""
    module, _, cls = PLACEMENTS[settings.placement].partition(":")
    return getattr(importlib.import_module(module), cls)(settings, name, language, progress)

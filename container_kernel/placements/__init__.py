"""Where a container runs: here, or as a Slurm job. Every face gets its placement from
`placement_for`, and drives it through the one interface of base.py."""

from __future__ import annotations

from ..runtimes.base import Progress
from ..settings import ContainerSettings
from .base import Placement
from .here import Here
from .slurm import Slurm

# The `placement` setting's values. A new scheduler: a Placement subclass, one line here.
PLACEMENTS: dict[str, type[Placement]] = {"local": Here, "slurm": Slurm}


def placement_for(
    settings: ContainerSettings, name: str, language: str = "", progress: Progress | None = None
) -> Placement:
    """The placement the settings ask for, for the kernel (spec) or cell `name`."""
    return PLACEMENTS[settings.placement](settings, name, language, progress)

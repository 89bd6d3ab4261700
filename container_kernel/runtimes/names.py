"""Which runtimes there are, by the name a `runtime` setting gives, without loading any.

Runtimes are registered in the entry point group `container_kernel.runtimes`, name ->
`module:Class` (a `base.Runtime` subclass). container-kernel declares its own there too, and
knows them without the group as well (a source checkout has no installed metadata): their names
are reserved, another package's entry of one of them is not used. registry.py loads a class when
a setting names it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

GROUP = "container_kernel.runtimes"
# container-kernel's own, in the order `auto` tries them (pyproject.toml declares the same).
BUILT_IN = {
    "apptainer": "container_kernel.runtimes.apptainer:Apptainer",
    "singularity": "container_kernel.runtimes.apptainer:Singularity",
    "charliecloud": "container_kernel.runtimes.charliecloud:Charliecloud",
}


def names() -> tuple[str, ...]:
    """Every runtime a setting may name: the built-in ones, then the registered others by name."""
    return (*BUILT_IN, *sorted(others()))


def others() -> dict[str, EntryPoint]:
    """The runtimes other packages registered, by name (the first on sys.path wins); looked up
    anew each time (a package installed meanwhile counts)."""
    from importlib.metadata import entry_points

    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=GROUP):
        if entry.name not in BUILT_IN:
            found.setdefault(entry.name, entry)
    return found


class SettingValues(Sequence[str]):
    """The values of the `runtime` setting: `auto` and `names()`, asked for anew each time (a
    traitlets Enum's and an argparse option's choices). Iterated lazily: a built-in value is
    found before other packages are looked for."""

    def __iter__(self) -> Iterator[str]:
        yield "auto"
        yield from BUILT_IN
        yield from sorted(others())

    def __contains__(self, value: object) -> bool:
        return any(value == name for name in self)

    def __len__(self) -> int:
        return len(("auto", *names()))

    def __getitem__(self, index):  # type: ignore[override]
        return ("auto", *names())[index]

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return repr(("auto", *names()))

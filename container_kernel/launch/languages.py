"""What a kernel's language needs inside, beyond Python's defaults (the spec's `language`).

R reads more of the home than Python does: `.Renviron` and `.Rprofile` from the working folder,
else from the home, and a user library under `~/R` that it silently ignores when missing (and
then asks, in a kernel that cannot answer, whether to create one). With a fake home all of it is
the fake home's; one case is left: a notebook in the real home itself, whose folder then is the
working folder (at /mnt/notebook), so R would read the real `.Rprofile` and `.Renviron` there.
A project folder's own `.Rprofile` (renv activates itself with one) keeps working.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from ..ground.folders import private_folder

R_LIBRARY = "R/library"  # in the fake home
UTF8_LOCALE = "C.UTF-8"  # in every glibc >= 2.35 and Debian's libc-bin; R mangles text without one


def is_r(language: str) -> bool:
    return language.strip().lower() == "r"


def environment(language: str, *, home_inside: str | None, cwd: str) -> dict[str, str]:
    """Defaults for the kernel's environment (what the user sets wins)."""
    if not is_r(language):
        return {}
    env = {"LANG": UTF8_LOCALE}
    if home_inside:
        env["R_LIBS_USER"] = f"{home_inside}/{R_LIBRARY}"
    if _is_real_home(cwd):
        env["R_ENVIRON_USER"] = f"{home_inside}/.Renviron" if home_inside else os.devnull
        env["R_PROFILE_USER"] = f"{home_inside}/.Rprofile" if home_inside else os.devnull
    return env


def prepare_home(language: str, home: Path | None) -> None:
    """Create what the language needs in the fake home before it starts (R's user library)."""
    if home is not None and is_r(language):
        private_folder(home / R_LIBRARY)


def _is_real_home(cwd: str) -> bool:
    """`$HOME`, or the home the passwd file gives (the runtimes' idea of it)."""
    homes = {os.path.expanduser("~"), os.path.expanduser(f"~{pwd.getpwuid(os.getuid()).pw_name}")}
    return os.path.realpath(cwd) in {os.path.realpath(home) for home in homes}

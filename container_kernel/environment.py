"""Which host variables may enter a container: only what the user named, plus Jupyter's own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

# jupyter_client's own variables (not JupyterHub's JPY_API_TOKEN, a secret under an old name).
JUPYTER_OWN = frozenset({"JPY_PARENT_PID", "JPY_SESSION_NAME"})

# Set inside every container: a fake home may still sit beside a real ~/.local (cwd binds).
ALWAYS = {"PYTHONNOUSERSITE": "1"}


def container_environment(
    host_env: Mapping[str, str],
    *,
    named: Iterable[str] = (),
    patterns: Iterable[str] = (),
    values: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables to set inside: jupyter_client's own, the `named` ones (a kernel spec's
    `env`), host variables matching `patterns`, then the explicit `values`. Nothing else.
    """
    patterns = list(patterns)
    named = set(named)
    chosen = {
        name: value
        for name, value in host_env.items()
        if name in JUPYTER_OWN
        or name in named
        or any(fnmatchcase(name, pattern) for pattern in patterns)
    }
    return {**ALWAYS, **chosen, **(values or {})}

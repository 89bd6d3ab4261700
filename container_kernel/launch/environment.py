"""Which host variables may enter a container: only what the user named, plus Jupyter's own.

A glob (`pass_env = ["*"]`, `"JUPYTERHUB_*"`) never admits a secret: names that look like one
pass only when a pattern names them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

# jupyter_client's own variables (not JupyterHub's JPY_API_TOKEN, a secret under an old name).
JUPYTER_OWN = frozenset({"JPY_PARENT_PID", "JPY_SESSION_NAME"})

# Secrets by name (matched in upper case): Jupyter's and JupyterHub's tokens, cloud and service
# credentials, and proxies (their URLs often carry a password).
SECRET_PATTERNS = (
    "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*_KEY", "*_KEY_ID",
    "*API_KEY*", "*PRIVATE_KEY*", "*_AUTH", "*COOKIE*", "JUPYTERHUB_*", "*_PROXY",
)  # fmt: skip

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
    named = set(named) | {pattern for pattern in patterns if not _is_glob(pattern)}
    globs = [pattern for pattern in patterns if _is_glob(pattern)]
    chosen = {
        name: value
        for name, value in host_env.items()
        if name in JUPYTER_OWN
        or name in named
        or (any(fnmatchcase(name, glob) for glob in globs) and not is_secret(name))
    }
    return {**ALWAYS, **chosen, **(values or {})}


def is_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret (case-insensitively)."""
    upper = name.upper()
    return any(fnmatchcase(upper, pattern) for pattern in SECRET_PATTERNS)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")

"""The one place that combines settings, fake home and clean-environment policy into a command.

Layers, each a separate step: [where it runs] + [runtime exec and its flags] + [the command
inside]. Every face (provisioner, launcher, magic, CLI) comes through here, on the machine where
the container runs: for a Slurm job the node's agent (node.py) does, under `srun` (slurm.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ground.errors import ContainerKernelError
from ..runtimes.base import Bind, ExecRequest, Runtime, parse_bind
from ..runtimes.registry import find_runtime
from ..settings import ContainerSettings
from . import gpus
from .environment import container_environment
from .homes import home_inside
from .sessions import Session

# Where the working directory goes when binding it at its own path would hide the fake home
# (a notebook opened in the home folder itself) or a system folder of the image.
NOTEBOOK_MOUNT = "/mnt/notebook"
# Where our private folder (connection-file copy...) goes when the container shares the host's
# /tmp; with a private /tmp, it is that /tmp.
PRIVATE_MOUNT = "/mnt/container-kernel"
# A %%container cell's files (cell.py, the pickled values), in that private folder.
CELL_FILES = ".container-magic"
# The container's own /tmp and /var/tmp, unless the host's are shared.
PRIVATE_TMP = frozenset({"/tmp", "/var/tmp"})
# Apptainer's own list of folders its current-directory mount never covers.
SYSTEM_DIRS = frozenset({"/etc", "/bin", "/mnt", "/usr", "/var", "/opt", "/sbin", "/lib", "/lib64"})


@dataclass(frozen=True)
class Launch:
    """What to hand to Popen: the argv, its environment and the host folder to start it in."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    runtime: Runtime | None  # None: the runtime is chosen where the container runs (Slurm)


def user_binds(specs: Sequence[str]) -> list[Bind]:
    """Parse the `binds` setting and check every source exists now, not inside the runtime."""
    binds = []
    for spec in specs:
        bind = parse_bind(spec)
        src = os.path.expanduser(bind.src)
        if not os.path.exists(src):
            msg = f"Bind source does not exist: {src} (in {spec!r}); create it or fix `binds`."
            raise ContainerKernelError(msg)
        binds.append(Bind(src, bind.dst, bind.read_only))
    return binds


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def workdir_mount(cwd: str, inside_home: str | None, tmp_mounts: bool = True) -> Bind | None:
    """Bind the working directory at its own path, or at NOTEBOOK_MOUNT where that would
    touch the fake home or cover one of the image's system folders, or lie in the private /tmp
    of a runtime that cannot mount there (`tmp_mounts` False)."""
    if cwd == "/":
        return None
    # A folder at, above or under the home inside: binding it there would cover the fake home,
    # or make the runtime create its path as empty folders in the fake home.
    covers_home = inside_home is not None and (
        _within(inside_home, cwd) or _within(cwd, inside_home)
    )
    covers_system = (
        cwd in SYSTEM_DIRS or cwd in PRIVATE_TMP or cwd.startswith(("/proc/", "/sys/", "/dev/"))
    )
    in_tmp = not tmp_mounts and any(_within(cwd, folder) for folder in PRIVATE_TMP)
    elsewhere = covers_home or covers_system or in_tmp
    return Bind(cwd, NOTEBOOK_MOUNT if elsewhere else cwd, staging="notebook")


def private_mount(settings: ContainerSettings, session: Session) -> Bind:
    """The session's folder that the container sees, and where: its private /tmp, or (when the
    host's /tmp is shared) a folder of its own at PRIVATE_MOUNT."""
    if not settings.share_tmp:
        return Bind(str(session.tmp), "/tmp")
    folder = session.folder / "private"
    folder.mkdir(mode=0o700, exist_ok=True)
    return Bind(str(folder), PRIVATE_MOUNT, staging="private")


def cell_files(settings: ContainerSettings, session: Session) -> Path:
    """A new folder for a cell's files (cell.py, the pickled values) on the host: hidden in the
    session's private folder (the cell's /tmp), where its own files cannot clash with them."""
    folder = Path(private_mount(settings, session).src, CELL_FILES)
    folder.mkdir(mode=0o700)
    return folder


def cell_files_inside(settings: ContainerSettings) -> str:
    """That folder, inside: a cell names its files by this path, which a runtime that
    relocates the folder rewrites."""
    return f"{PRIVATE_MOUNT if settings.share_tmp else '/tmp'}/{CELL_FILES}"


def build_request(
    settings: ContainerSettings,
    command: Sequence[str],
    *,
    cwd: str,
    home: Path | None,
    host_env: Mapping[str, str],
    session: Session,
    named_env: Sequence[str] = (),
    extra_binds: Sequence[Bind] = (),
    env_defaults: Mapping[str, str] | None = None,
    image: str,
    tmp_mounts: bool = True,
) -> ExecRequest:
    """Everything the runtime needs to know, decided once for every backend.

    `home` is the host folder of the fake home (None: no home mount); `session` the launch's
    private folder and mark; `named_env` names host variables the caller owns (a kernel spec's
    `env`); `extra_binds` are the caller's own; `env_defaults` are values inside that anything
    the user names wins over (a kernel language's needs); `tmp_mounts`: whether the runtime
    mounts the notebook's folder in the private /tmp (see workdir_mount).
    """
    inside_home = home_inside() if home is not None else None
    workdir = workdir_mount(cwd, inside_home, tmp_mounts or settings.share_tmp)
    private = private_mount(settings, session)
    binds = [*extra_binds, *user_binds(settings.binds)]
    if not settings.share_tmp and (covered := [b.spec() for b in binds if b.dst in PRIVATE_TMP]):
        msg = (
            f"The bind {covered[0]} would cover the kernel's private /tmp (its connection file "
            "is there): bind to another folder, or set share_tmp."
        )
        raise ContainerKernelError(msg)
    if settings.share_tmp:
        binds.insert(0, private)
    if workdir:
        binds.append(workdir)
    env = container_environment(
        host_env, named=named_env, patterns=settings.pass_env, values=settings.env
    )
    gpu = gpus.vendor(settings.gpu)  # `auto`: this machine's, where the container runs
    hints = {**gpus.thread_variables(settings.threads), **gpus.allocated(gpu, host_env)}
    env = {**(env_defaults or {}), **hints, **env, **session.environment}
    private_tmp = not settings.share_tmp
    return ExecRequest(
        image=image,
        command=list(command),
        env=env,
        binds=_dedupe(binds),
        home=Bind(str(home), inside_home, staging="home") if home and inside_home else None,
        workdir=workdir.dst if workdir else "/",
        cleanenv=settings.cleanenv,
        gpu=gpu,
        extra_args=list(settings.runtime_args),
        tmp=str(session.tmp) if private_tmp else None,
        var_tmp=str(session.var_tmp) if private_tmp else None,
        private=private,
        host_private=str(session.folder),
    )


def plan(
    settings: ContainerSettings,
    command: Sequence[str],
    *,
    cwd: str,
    home: Path | None,
    host_env: Mapping[str, str],
    session: Session,
    named_env: Sequence[str] = (),
    extra_binds: Sequence[Bind] = (),
    env_defaults: Mapping[str, str] | None = None,
    image: str,
) -> Launch:
    """The whole command that runs `command` in the local `image` (images/resolve.py found
    it; the other arguments: see build_request).

    The runtime process starts in `/` when the working directory is mounted elsewhere, so the
    runtime's own current-directory mount cannot cover the fake home.
    """
    runtime = find_runtime(settings.runtime, settings.runtime_path)
    request = build_request(
        settings, command, cwd=cwd, home=home, host_env=host_env, session=session,
        named_env=named_env, extra_binds=extra_binds, env_defaults=env_defaults,
        image=image,
        tmp_mounts=runtime.mounts_in_private_tmp,
    )  # fmt: skip
    command = runtime.exec_command(request, host_env)
    session.remove_at_end(command.created)
    for path, text in command.files.items():
        _write_private(Path(path), text)
    return Launch(command.argv, command.env, cwd if request.workdir == cwd else "/", runtime)


def _write_private(path: Path, text: str) -> None:
    """A file only we can read (values of the kernel's environment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # (a host value that is not UTF-8 arrives as its bytes, as os.environ holds them)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)


def _dedupe(binds: list[Bind]) -> list[Bind]:
    """One bind per destination (the working directory is often the connection file's folder)."""
    seen: dict[str, Bind] = {}
    for bind in binds:
        seen.setdefault(bind.dst, bind)
    return list(seen.values())

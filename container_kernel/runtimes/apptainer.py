"""Apptainer and Singularity (SingularityCE 3.x/4.x, Singularity 3.0-3.5, legacy 2.6).

The flavour quirks live here and nowhere else. Every flavour reads `--cleanenv`, `--home SRC:DST`
(which, unlike `-B SRC:$HOME`, really replaces the home on 2.6 too), `--no-home`, `--bind`,
`--pwd` and `--nv` (`--rocm` only from Singularity 3.5 on). Values go in through the env prefix
the flavour reads, with `--no-eval`, where it exists (the `--env` flag splits on commas and is
missing before 3.6); older flavours evaluate them, so there they go through a file that /bin/sh
reads inside. Under `--cleanenv` Apptainer still passes the host's proxy variables: they are
taken out of its environment. A private /tmp and /var/tmp are bound over the host's, which
Apptainer binds by default.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ground.errors import ContainerKernelError
from ..ground.folders import private_folder
from .base import Command, ExecRequest, Fact, Progress, Runtime, Store, with_user
from .pulls import cache_key, readable_name, run_pull

PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_")

_MODERN = re.compile(
    r"\b(apptainer|singularity-ce|singularity)\s+version\s+v?(\d+)\.(\d+)(?:\.(\d+))?"
)
_LEGACY = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Flavour:
    """One installed Apptainer/Singularity: what its `--version` says, and what that implies."""

    name: str  # "apptainer", "singularity-ce" or "singularity"
    version: tuple[int, int, int]

    @property
    def env_prefix(self) -> str:
        """Singularity of every age ignores APPTAINERENV_; Apptainer prefers it."""
        return "APPTAINERENV_" if self.name == "apptainer" else "SINGULARITYENV_"

    @property
    def forwards_signals(self) -> bool:
        """3.x and Apptainer keep a runtime parent that forwards signals; 2.x execs the command."""
        return self.name == "apptainer" or self.version >= (3, 0, 0)

    @property
    def early_3x(self) -> bool:
        """Singularity 3.0-3.5, whose binds have quirks of their own (see the two below)."""
        return self.name == "singularity" and (3, 0, 0) <= self.version < (3, 6, 0)

    @property
    def mounts_in_private_tmp(self) -> bool:
        """Whether it mounts the notebook's folder under the private /tmp we bind: Singularity
        3.0-3.5 skips a bind there whose mount point exists ("already mounted": every restart,
        once the first start made it) and its own current-folder mount, so a notebook under
        /tmp is bound elsewhere (launch.workdir_mount)."""
        return not self.early_3x

    @property
    def makes_mount_points_in_binds(self) -> bool:
        """3.x and Apptainer make a bind's mount point inside another bind (our /tmp); 2.x
        does not (see _make_mount_point)."""
        return self.name == "apptainer" or self.version >= (3, 0, 0)

    @property
    def has_rocm(self) -> bool:
        """`--rocm` (AMD GPUs) came with Singularity 3.5; every SingularityCE and Apptainer has
        it. `--nv` (NVIDIA) is in every flavour here, 2.6 included."""
        return self.name != "singularity" or self.version >= (3, 5, 0)

    @property
    def has_no_eval(self) -> bool:
        """`--no-eval` stops shell evaluation of injected values (Apptainer 1.1, CE 3.10)."""
        if self.name == "apptainer":
            return self.version >= (1, 1, 0)
        return self.name == "singularity-ce" and self.version >= (3, 10, 0)

    def __str__(self) -> str:
        return f"{self.name} {'.'.join(map(str, self.version))}"


def parse_version(text: str) -> Flavour:
    """Read the flavour from `--version` output, leniently (distributions add suffixes)."""
    text = text.strip()
    if match := _MODERN.search(text):
        name, *numbers = match.groups()
        return Flavour(name, tuple(int(n or 0) for n in numbers))  # type: ignore[arg-type]
    if match := _LEGACY.match(text):
        return Flavour("singularity", tuple(int(n or 0) for n in match.groups()))  # type: ignore[arg-type]
    msg = f"Cannot tell which Apptainer/Singularity this is from its --version output: {text!r}."
    raise ContainerKernelError(msg)


# Flavours without --no-eval get their values from a file of single-quoted assignments that
# /bin/sh reads inside, before it execs the command: no value ever goes through an evaluation.
ENV_FILE = ".container-kernel-env.sh"
SH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SOURCE_AND_EXEC = '. "$1"; shift; exec "$@"'
# Host variables that Apptainer keeps under --cleanenv (create.go's alwaysPassKeys).
PROXIES = frozenset(f"{name}_proxy" for name in ("http", "https", "no", "all", "ftp")) | frozenset(
    f"{name.upper()}_PROXY" for name in ("http", "https", "no", "all", "ftp")
)


def shell_literal(value: str) -> str:
    """`value` as one single-quoted sh word: nothing inside is ever interpreted."""
    return "'" + value.replace("'", "'\\''") + "'"


def env_file(values: Mapping[str, str]) -> str:
    """The values as sh assignments, read byte for byte by any POSIX sh."""
    return "".join(
        f"export {name}={shell_literal(value)}\n"
        for name, value in values.items()
        if SH_NAME.fullmatch(name)  # sh holds no other names (a host's BASH_FUNC_x%%)
    )


def _utf8(value: str) -> bool:
    """Whether a value is text (os.environ keeps bytes that are not UTF-8 as surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _expressible(path: str, flavour: Flavour | None = None) -> bool:
    """`--bind` splits on ',' and ':': a path holding one cannot be bound by name. Singularity
    3.0-3.5 also reads '"' as CSV quoting (a usage error) and mangles what is not UTF-8."""
    if "," in path or ":" in path:
        return False
    if flavour is not None and flavour.early_3x:
        return '"' not in path and _utf8(path)
    return True


def _gpu_flag(flavour: Flavour, gpu: str) -> str:
    """The flag that binds the host's GPU driver into the container (without a GPU, the runtime
    warns and goes on)."""
    if gpu != "amd":
        return "--nv"
    if not flavour.has_rocm:
        msg = f"{flavour} has no --rocm for AMD GPUs (Singularity >= 3.5, SingularityCE and "
        msg += "Apptainer have it): use one of those, or set gpu to none."
        raise ContainerKernelError(msg)
    return "--rocm"


def _make_mount_point(dst: str, request: ExecRequest) -> None:
    """A bind inside the private /tmp or /var/tmp (a notebook folder under /tmp) needs its
    mount point there, in our folder: Singularity 2.x will not create it ("Trying to create
    directory ... outside of container": the bind is skipped and the start fails), while
    SingularityCE 3.4.2 skips a bind onto a mount point that it did not make itself."""
    for folder, inside in ((request.tmp, "/tmp"), (request.var_tmp, "/var/tmp")):
        if folder and dst.startswith(inside + "/"):
            Path(folder, dst[len(inside) + 1 :]).mkdir(parents=True, exist_ok=True)


def exec_command(
    executable: str, flavour: Flavour, request: ExecRequest, host_env: Mapping[str, str]
) -> Command:
    """The argv and the runtime's own environment for `exec` of `request` (its only side effect:
    mount points in our private /tmp)."""
    argv = [executable, "exec"]
    if request.cleanenv:
        argv.append("--cleanenv")
    if flavour.has_no_eval:
        argv.append("--no-eval")
    if request.home is None:
        argv.append("--no-home")
    elif _expressible(request.home.src):
        argv += ["--home", f"{request.home.src}:{request.home.dst}"]
    else:
        msg = f"The fake home {request.home.src} has ',' or ':' in its path: set home_root."
        raise ContainerKernelError(msg)
    for folder, inside in ((request.tmp, "/tmp"), (request.var_tmp, "/var/tmp")):
        if folder:  # over the host's, which Apptainer binds by default
            argv += ["--bind", f"{folder}:{inside}"]
    for bind in request.binds:
        if not flavour.makes_mount_points_in_binds:
            _make_mount_point(bind.dst, request)
        if _expressible(bind.src, flavour) and _expressible(bind.dst, flavour):
            argv += ["--bind", bind.spec()]
        elif not (bind.staging == "notebook" and bind.src == bind.dst):
            odd = "',', ':', '\"' or non-UTF-8" if flavour.early_3x else "',' or ':'"
            msg = f"{flavour} cannot bind {bind.src}: {odd} in the path; rename it."
            raise ContainerKernelError(msg)
        # else: the runtime starts in that folder and mounts its current directory itself
    if request.workdir:
        argv += ["--pwd", request.workdir]
    if request.gpu:
        argv.append(_gpu_flag(flavour, request.gpu))
    argv += [*request.extra_args, request.image]

    env = dict(host_env)
    if request.cleanenv:  # prefixed host variables and proxies would pass a clean environment
        env = {k: v for k, v in env.items() if not k.startswith(PREFIXES) and k not in PROXIES}
    # Apptainer hands values to its starter as JSON, which turns bytes that are not UTF-8 into
    # U+FFFD: those go through the file below, byte for byte (the others as prefixed variables).
    raw = {name: value for name, value in request.env.items() if not _utf8(value)}
    if flavour.has_no_eval:
        env.update(
            {flavour.env_prefix + name: value for name, value in request.env.items()
             if name not in raw}
        )  # fmt: skip
        if not raw:
            return Command([*argv, *request.command], env)
    values = raw if flavour.has_no_eval else request.env
    if request.private is None:
        msg = f"{flavour} has no --no-eval: values need a private folder to go through."
        raise ContainerKernelError(msg)
    host_file = f"{request.private.src}/{ENV_FILE}"
    inside_file = f"{request.private.dst}/{ENV_FILE}"
    command = ["/bin/sh", "-c", SOURCE_AND_EXEC, "sh", inside_file, *request.command]
    return Command([*argv, *command], env, {host_file: env_file(values)})


class Apptainer(Runtime):
    """Apptainer, or a Singularity of any flavour found under that name (or by runtime_path)."""

    name = "apptainer"
    executables = ("apptainer",)
    cache_kind = "sif"  # the same for every flavour
    cache_folders = ("apptainer", "tmp")  # its cache (layers, OCI blobs) and temporary files

    @classmethod
    def parse_version(cls, text: str) -> Flavour:
        return parse_version(text)

    def exec_command(self, request: ExecRequest, host_env: Mapping[str, str]) -> Command:
        return exec_command(self.executable, self.flavour, request, host_env)

    @property
    def forwards_signals(self) -> bool:
        return self.flavour.forwards_signals

    @property
    def mounts_in_private_tmp(self) -> bool:
        return self.flavour.mounts_in_private_tmp

    def pull(
        self, reference: str, store: Store, pull_args: Sequence[str], progress: Progress
    ) -> Path:
        """`pull` into the store under a temporary name, renamed once whole. Singularity 2.x
        names its output with --name, in SINGULARITY_PULLFOLDER."""
        folder = store.root / "sif"
        private_folder(folder)
        final = folder / f"{readable_name(reference)}-{cache_key(reference)}.sif"
        partial = folder / f".{final.name}.{os.getpid()}.partial"
        env = {**with_user(os.environ), **pull_env(store.root)}
        flavour, executable = self.flavour, self.executable
        if flavour.name == "singularity" and flavour.version < (3, 0, 0):
            argv = [executable, "pull", *pull_args, "--name", partial.name, reference]
            env["SINGULARITY_PULLFOLDER"] = str(folder)
        else:
            argv = [executable, "pull", *pull_args, str(partial), reference]
        try:
            run_pull(argv, env, reference, store.root, progress)
            partial.replace(final)
        finally:
            partial.unlink(missing_ok=True)
        return final

    @classmethod
    def clean(
        cls, store: Store, named: set[Path], remove: Callable[[Path], int], progress: Progress
    ) -> int:
        """SIF files no record names, and what a killed pull left, but a pull under way's."""
        folder = store.root / "sif"
        freed = 0
        for path in folder.glob("*") if folder.is_dir() else ():
            if path not in named and not _being_written(path):
                freed += remove(path)
        return freed

    def doctor(self, image: str, gpu: str | None, gpu_setting: str) -> list[Fact]:
        if self.flavour.has_no_eval:
            values = Fact(True, "no-eval", "yes, values go in literally (--no-eval)")
        else:
            values = Fact(True, "no-eval", f"not in {self.flavour}: values go in from a file "
                          "/bin/sh reads inside")  # fmt: skip
        gpus = Fact(True, "GPUs", f"{gpu_setting} (NVIDIA with --nv, AMD with --rocm, auto: "
                    "this machine's)")  # fmt: skip
        return [values, gpus]


class Singularity(Apptainer):
    """The `singularity` executable: SingularityCE, or Singularity 2.6-3.x (the flavour says)."""

    name = "singularity"
    executables = ("singularity",)


def pull_env(root: Path) -> dict[str, str]:
    """Where Apptainer keeps its own cache and temporary files while pulling: under `root`
    (never in $HOME)."""
    cache, tmp = root / "apptainer", root / "tmp"
    for folder in (cache, tmp):
        private_folder(folder)
    return {"APPTAINER_CACHEDIR": str(cache), "SINGULARITY_CACHEDIR": str(cache),
            "APPTAINER_TMPDIR": str(tmp), "SINGULARITY_TMPDIR": str(tmp)}  # fmt: skip


def _being_written(path: Path) -> bool:
    """Ours (`.NAME.PID.partial`) while its process lives; the runtime's temporary files
    (`tmp-copy-N`...) for an hour."""
    if path.name.endswith(".partial"):
        owner = path.name.rsplit(".", 2)[-2]
        return owner.isdigit() and _alive(int(owner))
    return not path.name.endswith(".sif") and time.time() - path.lstat().st_mtime < 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

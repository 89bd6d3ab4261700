"""The settings every face shares: one set of traits for the provisioner, the magics and the CLI.

Set them in a kernel.json's `metadata.kernel_provisioner.config`, in `jupyter_*_config.py`
(`c.ContainerSettings.binds = [...]` reaches every face), or with `%config ContainerMagics.x`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import Config, LoggingConfigurable

from .ground.errors import ContainerKernelError
from .ground.folders import cache_root
from .runtimes.base import parse_bind
from .runtimes.names import SettingValues

HOME_MODES = ("persistent", "temporary", "none")
RUNTIMES = SettingValues()  # auto, apptainer, singularity, charliecloud, then registered ones
PLACEMENTS = ("local", "slurm")  # placements/__init__.py: one class each
# Earlier names of settings, still read (kernel specs and site files written before).
RENAMED = {"launcher": "placement"}
ENCRYPTIONS = ("auto", "required", "off")
INJECT_MODES = ("auto", "never", "always")
# The `gpu` setting's values: no GPU, a vendor, or whatever the machine that runs it has.
GPU_MODES = ("none", "nvidia", "amd", "auto")


def gpu_mode(value: object) -> str:
    """A `gpu` setting's value as one of GPU_MODES; the old booleans: true is nvidia."""
    if isinstance(value, bool):
        return "nvidia" if value else "none"
    text = str(value).lower()
    if text in ("true", "false"):  # the boolean on a command line (--ContainerSettings.gpu=true)
        return "nvidia" if text == "true" else "none"
    if text not in GPU_MODES:
        msg = f"gpu must be one of {', '.join(GPU_MODES)} (or true/false), not {value!r}."
        raise ValueError(msg)
    return text


class GpuMode(CaselessStrEnum):
    """The `gpu` setting: one of GPU_MODES, or one of its old booleans (true means nvidia)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(GPU_MODES, default_value="none", **kwargs)

    def validate(self, obj, value):
        if isinstance(value, (bool, str)):
            with contextlib.suppress(ValueError):
                return gpu_mode(value)
        return self.error(obj, value)  # (raises TraitError, naming the choices)


class ContainerSettings(LoggingConfigurable):
    """How to run a command in a container image; shared by every face of container-kernel."""

    image_env = "CONTAINER_KERNEL_IMAGE"
    image = Unicode(
        config=True,
        help="""The container image: a SIF file, a sandbox or Charliecloud directory, or a URI the
        runtime understands (docker://..., oras://...). Required; defaults to
        $CONTAINER_KERNEL_IMAGE.""",
    ).tag(no_flag="the IMAGE argument of the CLI and %%container")
    runtime = CaselessStrEnum(
        RUNTIMES,
        default_value="auto",
        config=True,
        help="""Which container runtime runs the image: apptainer, singularity, charliecloud
        (ch-run), or one another package registers (docs/architecture.md). 'auto' takes
        apptainer, then singularity, then charliecloud, then the registered ones, whichever is
        found first on PATH.""",
    )
    runtime_path = Unicode(
        "",
        config=True,
        help="Path of the runtime executable when it is not on PATH.",
    )
    binds = List(
        Unicode(),
        config=True,
        help="""Extra host paths to bind into the container, each 'SRC[:DST[:ro|rw]]'. The working
        directory (the notebook's folder) is bound already; the connection file is in the
        private /tmp.""",
    )
    env = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="Variables to set inside the container, passed literally (never shell-evaluated).",
    )
    pass_env = List(
        Unicode(),
        config=True,
        help="""Glob patterns of host variable names allowed into the container (e.g. 'OMP_*',
        'CUDA_VISIBLE_DEVICES'). Empty by default: nothing from the host passes unless named.""",
    )
    cleanenv = Bool(
        True,
        config=True,
        help="""Start from a clean environment (the default): only what env, pass_env and the
        kernel spec name goes in. Off lets every host variable in, tokens and PYTHONPATH too.""",
    )
    home = Unicode(
        "persistent",
        config=True,
        help="""The home directory inside the container, never the real one. 'persistent': a
        per-kernel-spec directory under home_root, kept between sessions; 'temporary': a fresh
        directory removed at shutdown (kept across restarts); 'none': no home mount; or a host
        path to use as the home.""",
    )
    home_root = Unicode(
        config=True,
        help="""Where persistent fake homes live, one folder per kernel spec.
        Default: <jupyter data dir>/container-kernel/homes.""",
    )
    gpu = GpuMode(
        config=True,
        help="""GPUs inside: 'none', 'nvidia' (--nv; ch-run: an image prepared once with
        `ch-fromhost --nvidia IMAGE`), 'amd' (--rocm; not with ch-run) or 'auto' (what the
        machine that runs the container has, by its /dev/nvidia* or /dev/kfd). With a GPU, the
        host's variables that say which GPUs were allocated go in too: CUDA_VISIBLE_DEVICES and
        NVIDIA_VISIBLE_DEVICES, or ROCR_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES and
        GPU_DEVICE_ORDINAL, and Slurm's SLURM_*GPU*. true means 'nvidia', false 'none'.""",
    )
    threads = Integer(
        None,
        allow_none=True,
        min=1,
        config=True,
        help="""Threads for the numerical libraries inside: sets OMP_NUM_THREADS, MKL_NUM_THREADS,
        OPENBLAS_NUM_THREADS and NUMEXPR_NUM_THREADS (a value in `env` or `pass_env` wins), and with
        placement 'slurm' asks for as many CPUs (srun --cpus-per-task; a -c/--cpus-per-task in
        slurm_args wins). Unset by default.""",
    )
    runtime_args = List(
        Unicode(),
        config=True,
        help="Extra arguments for the runtime's exec command, placed before the image.",
    )
    share_tmp = Bool(
        False,
        config=True,
        help="""Share the host's /tmp (and Apptainer's /var/tmp) with the container. Off by
        default: each kernel or cell gets a private /tmp of its own, removed at its end, so no
        kernel sees another's files.""",
    )

    image_cache = Unicode(
        config=True,
        help="""Where registry images (docker://, oras://, library://) are pulled once, with the
        runtime's own caches and the ipykernel provided for images without one. Default:
        $XDG_CACHE_HOME/container-kernel (~/.cache/container-kernel).""",
    )
    image_cache_shared = List(
        Unicode(),
        config=True,
        help="""Read-only caches searched first, e.g. a site folder an admin filled with
        `container-kernel pull --image-cache DIR IMAGE`.""",
    )
    pull_args = List(
        Unicode(),
        config=True,
        help="""Extra arguments for the runtime's pull (apptainer pull, ch-image pull), e.g.
        ['--no-https'] for a registry without TLS.""",
    )
    inject_kernel = CaselessStrEnum(
        INJECT_MODES,
        default_value="auto",
        config=True,
        help="""Provide ipykernel from the host side, without changing the image: 'auto' when the
        image's python lacks it, 'always', or 'never'. It is installed once per python version
        and platform into image_cache (pip, wheels only) and bound read-only; the image's own
        packages come first on sys.path.""",
    )
    inject_wheels = Unicode(
        "",
        config=True,
        help="""A folder of wheels to take ipykernel and its dependencies from instead of the
        package index (offline clusters): `pip download --only-binary=:all: --python-version
        X.Y --platform ... -d DIR ipykernel`.""",
    )
    standby = Bool(
        True,
        config=True,
        help="""Keep the next container of a running kernel ready: started with the same launch,
        its Python imports ipykernel at the lowest CPU priority and waits, holding no key and
        running nothing, until a restart hands it the kernel's start (a restart then skips the
        container's start and the imports). One idle process per kernel (its memory: the
        README's benchmark). Kernels started by the provisioner on this machine (not Slurm's).""",
    )

    placement = CaselessStrEnum(
        PLACEMENTS,
        default_value="local",
        config=True,
        help="""Where the container runs: 'local' (on this machine) or 'slurm' (a Slurm job on a
        compute node, started with srun and the options in slurm_args). Its earlier name,
        `launcher`, is still read.""",
    )
    slurm_args = List(
        Unicode(),
        config=True,
        help="""srun options for a kernel or cell run as a Slurm job, e.g. ['--partition=gpu',
        '--time=02:00:00', '--cpus-per-task=8', '--mem=32G', '--gres=gpu:1'].""",
    )
    slurm_start_timeout = Float(
        300.0,
        config=True,
        help="""Seconds a Slurm job may wait in the queue before the start fails (the job is
        cancelled and the message names Slurm's reason).""",
    )
    encryption = CaselessStrEnum(
        ENCRYPTIONS,
        default_value="auto",
        config=True,
        help="""CurveZMQ encryption of the channels of a kernel on another node (placement slurm),
        whose traffic crosses the cluster's network: 'auto' encrypts where the kernel spec declares
        it (metadata.supported_encryption, written by `container-kernel install` for an image
        whose ipykernel applies it, 7.x), 'required' also fails a start that cannot be encrypted,
        'off' leaves it to jupyter_client's KernelManager.transport_encryption, which also governs
        local kernels.""",
    )
    locked = List(
        Unicode(),
        config=True,
        help="""Settings a site fixes in its Jupyter config: a kernel spec, a %%container option or
        a command-line flag that sets one of them otherwise is refused (e.g. ['cleanenv', 'home',
        'home_root', 'share_tmp']). Lists add up, so a locked list takes no additions either.""",
    ).tag(no_flag="the site's alone: set in a Jupyter config file")

    def __init__(self, **kwargs: Any) -> None:
        """Settings from Jupyter config first, then the ones given here (a kernel spec's config,
        a cell's options): lists add to the configured ones, dicts merge (given keys win),
        other values replace. Unknown names and changes to `locked` settings are refused.
        `site=False` leaves the site's config files out."""
        with_site = kwargs.pop("site", True)
        kwargs = {RENAMED.get(name, name): value for name, value in kwargs.items()}
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in self._settings()}
        unknown = [
            name for name in kwargs if not (name in _FRAMEWORK_KWARGS or self.has_trait(name))
        ]
        if unknown:
            raise ContainerKernelError(_unknown_message(unknown[0], self._settings()))
        # The site's files first, whatever the application (or none) configured (see site_config);
        # site=False: the values given alone (what a kernel.json written by `install` says).
        parent = kwargs.get("parent")
        config = site_config() if with_site else Config()
        config.merge(kwargs.get("config") or getattr(parent, "config", None) or {})
        kwargs["config"] = config
        try:
            super().__init__(**kwargs)
        except TraitError as err:  # a site's value of the wrong type
            msg = f"A container-kernel setting in the Jupyter config: {err}"
            raise ContainerKernelError(msg) from None
        if "locked" in given:
            msg = "`locked` is the site's: set it in a Jupyter config file, not here."
            raise ContainerKernelError(msg)
        for name, value in given.items():
            current = getattr(self, name)
            if isinstance(current, list):
                combined: Any = [*current, *(item for item in value if item not in current)]
            elif isinstance(current, dict):
                combined = {**current, **value}
            else:
                combined = value
            setattr(self, name, combined)  # validated, normalised (gpu: true is "nvidia")
            if name in self.locked and getattr(self, name) != current:
                msg = f"The site fixes `{name}` ({current!r}): {combined!r} is not allowed here."
                raise ContainerKernelError(msg)

    @classmethod
    def _settings(cls) -> set[str]:
        return set(ContainerSettings.class_traits(config=True))

    @default("image")
    def _default_image(self) -> str:
        return os.environ.get(self.image_env, "")

    @default("image_cache")
    def _default_image_cache(self) -> str:
        return str(cache_root())

    @default("home_root")
    def _default_home_root(self) -> str:
        from jupyter_core.paths import jupyter_data_dir

        return str(Path(jupyter_data_dir(), "container-kernel", "homes"))

    @validate("binds")
    def _validate_binds(self, proposal):
        for spec in proposal.value:
            try:
                parse_bind(spec)
            except ContainerKernelError as err:
                raise TraitError(str(err)) from None
        return proposal.value

    @validate("home")
    def _validate_home(self, proposal):
        value = proposal.value
        if value not in HOME_MODES and not value.startswith(("/", "~")):
            msg = f"home must be one of {', '.join(HOME_MODES)} or an absolute path, not {value!r}."
            raise TraitError(msg)
        return value


# What traitlets and jupyter_client hand every Configurable or provisioner, besides settings.
_FRAMEWORK_KWARGS = frozenset({"parent", "config", "log", "kernel_id", "kernel_spec", "shell"})


def _unknown_message(name: str, known: set[str]) -> str:
    close = get_close_matches(name, sorted(known), n=1)
    hint = f": did you mean `{close[0]}`?" if close else f"; known: {', '.join(sorted(known))}."
    return f"Unknown container-kernel setting `{name}`{hint}"


def _renamed(section: Config) -> Config:
    """A config section with earlier setting names (and those in `locked`) as they are now."""
    section = Config({RENAMED.get(name, name): value for name, value in section.items()})
    if isinstance(section.get("locked"), list):
        section.locked = [RENAMED.get(name, name) for name in section.locked]
    return section


SITE_FILES = ("container_kernel_config", "jupyter_config", "jupyter_server_config")
_site_cache: dict[tuple, Any] = {}


def site_config():
    """The settings in Jupyter's config files (container_kernel_config, jupyter_config and
    jupyter_server_config, .json and .py, in every folder of Jupyter's config path, lowest
    priority first). Every ContainerSettings applies them itself, under the config its
    application gives it, so a site's policy holds whatever the client: a server, papermill, a
    bare KernelManager, the launcher, the magics, the CLI. Sections `ContainerSettings` and
    `ContainerProvisioner` both count. Read again only when a file changes."""
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import Config, JSONFileConfigLoader, PyFileConfigLoader

    files = []
    for folder in reversed(jupyter_config_path()):
        for base in SITE_FILES:
            for loader, suffix in ((JSONFileConfigLoader, ".json"), (PyFileConfigLoader, ".py")):
                with contextlib.suppress(OSError):
                    changed = os.stat(Path(folder, base + suffix)).st_mtime_ns
                    files.append((loader, base + suffix, folder, changed))
    key = tuple(entry[1:] for entry in files)
    if key not in _site_cache:
        config = Config()
        for loader, name, folder, _ in files:
            try:
                config.merge(loader(name, folder).load_config())
            except Exception as err:  # a site's syntax error: say where, in one line
                msg = f"Cannot read {Path(folder, name)}: {type(err).__name__}: {err}"
                raise ContainerKernelError(msg) from None
        merged = Config()
        for section in (config.ContainerSettings, config.ContainerProvisioner):
            merged.ContainerSettings.merge(_renamed(section))
        _site_cache.clear()
        _site_cache[key] = merged
    return copy.deepcopy(_site_cache[key])

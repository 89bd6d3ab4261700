"""The settings every face shares: one set of traits for the provisioner, the magics and the CLI.

Set them in a kernel.json's `metadata.kernel_provisioner.config`, in `jupyter_*_config.py`
(`c.ContainerSettings.binds = [...]` reaches every face), or with `%config ContainerMagics.x`.
"""

from __future__ import annotations

import argparse
import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import LoggingConfigurable

from .errors import ContainerKernelError
from .runtimes.base import parse_bind

HOME_MODES = ("persistent", "temporary", "none")
RUNTIMES = ("auto", "apptainer", "singularity", "charliecloud")
LAUNCHERS = ("local", "slurm")


class ContainerSettings(LoggingConfigurable):
    """How to run a command in a container image; shared by every face of container-kernel."""

    image_env = "CONTAINER_KERNEL_IMAGE"
    image = Unicode(
        config=True,
        help="""The container image: a SIF file, a sandbox or Charliecloud directory, or a URI the
        runtime understands (docker://..., oras://...). Required; defaults to
        $CONTAINER_KERNEL_IMAGE.""",
    )
    runtime = CaselessStrEnum(
        RUNTIMES,
        default_value="auto",
        config=True,
        help="""Which container runtime runs the image. 'auto' takes apptainer, then singularity,
        then charliecloud (ch-run), whichever is found first on PATH.""",
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
        help="""Start from a clean environment (--cleanenv). Turn off only if you really want every
        host variable, tokens and PYTHONPATH included, inside the container.""",
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
    gpu = Bool(
        False,
        config=True,
        help="""Make the host's NVIDIA GPUs usable inside (--nv). Pass CUDA_VISIBLE_DEVICES with
        pass_env if the scheduler sets it. For AMD, add '--rocm' to runtime_args.""",
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

    launcher = CaselessStrEnum(
        LAUNCHERS,
        default_value="local",
        config=True,
        help="""Where the container runs: 'local' (on this machine) or 'slurm' (a Slurm job on a
        compute node, started with srun and the options in slurm_args).""",
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
    locked = List(
        Unicode(),
        config=True,
        help="""Settings a site fixes in its Jupyter config: a kernel spec, a %%container option or
        a command-line flag that sets one of them otherwise is refused (e.g. ['cleanenv', 'home',
        'home_root', 'share_tmp']). Lists add up, so a locked list takes no additions either.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        """Settings from Jupyter config first, then the ones given here (a kernel spec's config,
        a cell's options): lists add to the configured ones, dicts merge (given keys win),
        other values replace. Unknown names and changes to `locked` settings are refused."""
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in self._settings()}
        unknown = [
            name for name in kwargs if not (name in _FRAMEWORK_KWARGS or self.has_trait(name))
        ]
        if unknown:
            raise ContainerKernelError(_unknown_message(unknown[0], self._settings()))
        super().__init__(**kwargs)
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
            if name in self.locked and combined != current:
                msg = f"The site fixes `{name}` ({current!r}): {combined!r} is not allowed here."
                raise ContainerKernelError(msg)
            setattr(self, name, combined)

    @classmethod
    def _settings(cls) -> set[str]:
        return set(ContainerSettings.class_traits(config=True))

    @default("image")
    def _default_image(self) -> str:
        return os.environ.get(self.image_env, "")

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


def site_config():
    """The settings in Jupyter's config files (jupyter_config and jupyter_server_config, .json
    and .py, in every config folder, lowest priority first), for the faces Jupyter Server does
    not configure: the launcher of an installed spec, the magics, the CLI. Sections
    `ContainerSettings` and `ContainerProvisioner` both count (the launcher stands in for the
    provisioner)."""
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import Config, JSONFileConfigLoader, PyFileConfigLoader

    config = Config()
    for folder in reversed(jupyter_config_path()):
        for base in ("jupyter_config", "jupyter_server_config"):
            for loader, suffix in ((JSONFileConfigLoader, ".json"), (PyFileConfigLoader, ".py")):
                if Path(folder, base + suffix).is_file():
                    config.merge(loader(base + suffix, folder).load_config())
    merged = Config()
    merged.ContainerSettings.merge(config.ContainerSettings)
    merged.ContainerSettings.merge(config.ContainerProvisioner)
    return merged


# Command-line spelling of the settings, shared by the CLI and the %%container magic:
# (flags, trait, argparse keywords with a help that fits every face).
ARGUMENTS: list[tuple[tuple[str, ...], str, dict]] = [
    (("--runtime",), "runtime", {"choices": RUNTIMES, "help": (
        "Container runtime: auto (apptainer, then singularity, then ch-run), apptainer, "
        "singularity or charliecloud.")}),
    (("--runtime-path",), "runtime_path", {"metavar": "PATH", "help": (
        "The runtime executable, when it is not on PATH.")}),
    (("-B", "--bind"), "binds", {"action": "append", "metavar": "SRC[:DST[:ro|rw]]", "help": (
        "Bind a host path into the container (repeatable). The working folder is bound already.")}),
    (("--env",), "env", {"action": "append", "metavar": "NAME=VALUE", "help": (
        "Set a variable inside, literally, never shell-evaluated (repeatable).")}),
    (("--pass-env",), "pass_env", {"action": "append", "metavar": "PATTERN", "help": (
        "Let in host variables whose names match PATTERN, e.g. 'OMP_*' (repeatable). Nothing "
        "else from the host enters.")}),
    (("--home",), "home", {"metavar": "persistent|temporary|none|PATH", "help": (
        "The home inside, never the real one: persistent (a folder of its own, kept), temporary "
        "(fresh, then removed), none, or a host folder.")}),
    (("--home-root",), "home_root", {"metavar": "DIR", "help": (
        "Where persistent fake homes live.")}),
    (("--cleanenv",), "cleanenv", {"action": argparse.BooleanOptionalAction, "help": (
        "Start from a clean environment (the default); --no-cleanenv lets the whole host "
        "environment in, tokens included.")}),
    (("--gpu",), "gpu", {"action": argparse.BooleanOptionalAction, "help": (
        "Make the host's NVIDIA GPUs usable inside (--nv); pass CUDA_VISIBLE_DEVICES with "
        "--pass-env. Not with ch-run.")}),
    (("--share-tmp",), "share_tmp", {"action": argparse.BooleanOptionalAction, "help": (
        "Share the host's /tmp with the container; by default it gets a private /tmp of its "
        "own.")}),
    (("--launcher",), "launcher", {"choices": LAUNCHERS, "help": (
        "Where the container runs: local, or slurm (a job on a compute node, via srun).")}),
    (("--slurm-arg",), "slurm_args", {"action": "append", "metavar": "ARG", "help": (
        "An srun option for the Slurm job (repeatable; --slurm-arg=--partition=gpu).")}),
    (("--slurm-start-timeout",), "slurm_start_timeout", {"type": float, "metavar": "SECONDS",
        "help": "Seconds a Slurm job may wait in the queue before the start fails."}),
    (("--runtime-arg",), "runtime_args", {"action": "append", "metavar": "ARG", "help": (
        "An extra argument for the runtime's exec, before the image (repeatable; "
        "--runtime-arg=--rocm).")}),
]  # fmt: skip


def add_settings_arguments(add_argument) -> None:
    """Declare the settings' flags with `add_argument` (argparse's, or magic_arguments')."""
    for flags, trait, keywords in ARGUMENTS:
        add_argument(*flags, dest=trait, **keywords)


def settings_from_arguments(namespace) -> dict:
    """The settings given on a command line (flags left out are absent, not defaults)."""
    values = {}
    for _, trait, _ in ARGUMENTS:
        value = getattr(namespace, trait, None)
        if value is None:
            continue
        if trait == "env":
            value = dict(_name_value(item) for item in value)
        values[trait] = value
    return values


def _name_value(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.isidentifier():
        msg = f"--env takes NAME=VALUE, not {item!r}."
        raise ContainerKernelError(msg)
    return name, value

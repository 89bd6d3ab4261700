"""The settings' command-line spelling, shared by the CLI and the %%container magic."""

from __future__ import annotations

import argparse

from ..ground.errors import ContainerKernelError
from ..launch.gpus import GPU_MODES
from ..settings import ENCRYPTIONS, INJECT_MODES, LAUNCHERS, RUNTIMES


def _gpu_value(text: str) -> str:
    """`--gpu VALUE`: a bare `--gpu` takes the next word, so a wrong one says how to avoid it."""
    if text.lower() not in GPU_MODES:
        msg = (
            f"takes {', '.join(GPU_MODES)}, not {text!r} (a bare --gpu before IMAGE or COMMAND: "
            "write --gpu=nvidia)"
        )
        raise argparse.ArgumentTypeError(msg)
    return text.lower()


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
    (("--gpu",), "gpu", {"nargs": "?", "const": "nvidia", "type": _gpu_value,
        "metavar": "none|nvidia|amd|auto", "help": (
        "GPUs inside: nvidia (bare --gpu: --nv; ch-run: an image prepared with `ch-fromhost "
        "--nvidia IMAGE`), amd (--rocm), auto (what the machine running it has) or none; "
        "the variables saying which GPUs were allocated (CUDA_VISIBLE_DEVICES, "
        "ROCR_VISIBLE_DEVICES, SLURM_*GPU*...) go in with them.")}),
    (("--no-gpu",), "gpu", {"action": "store_const", "const": "none", "help": (
        "No GPUs inside (the default): the same as --gpu none.")}),
    (("--threads",), "threads", {"type": int, "metavar": "N", "help": (
        "Threads for numerical libraries inside (OMP_NUM_THREADS, MKL_NUM_THREADS, "
        "OPENBLAS_NUM_THREADS, NUMEXPR_NUM_THREADS; --env wins), and with --launcher slurm "
        "as many CPUs (--cpus-per-task, unless a --slurm-arg gives -c/--cpus-per-task).")}),
    (("--share-tmp",), "share_tmp", {"action": argparse.BooleanOptionalAction, "help": (
        "Share the host's /tmp with the container; by default it gets a private /tmp of its "
        "own.")}),
    (("--launcher",), "launcher", {"choices": LAUNCHERS, "help": (
        "Where the container runs: local, or slurm (a job on a compute node, via srun).")}),
    (("--slurm-arg",), "slurm_args", {"action": "append", "metavar": "ARG", "help": (
        "An srun option for the Slurm job (repeatable; --slurm-arg=--partition=gpu).")}),
    (("--slurm-start-timeout",), "slurm_start_timeout", {"type": float, "metavar": "SECONDS",
        "help": "Seconds a Slurm job may wait in the queue before the start fails."}),
    (("--image-cache",), "image_cache", {"metavar": "DIR", "help": (
        "Where registry images (docker://...) are pulled once, and kept (default: "
        "~/.cache/container-kernel).")}),
    (("--pull-arg",), "pull_args", {"action": "append", "metavar": "ARG", "help": (
        "An extra argument for the runtime's pull (repeatable; --pull-arg=--no-https).")}),
    (("--runtime-arg",), "runtime_args", {"action": "append", "metavar": "ARG", "help": (
        "An extra argument for the runtime's exec, before the image (repeatable; "
        "--runtime-arg=--rocm).")}),
]  # fmt: skip


# What only a kernel has (the CLI's spec commands; a %%container cell has no channels).
KERNEL_ARGUMENTS: list[tuple[tuple[str, ...], str, dict]] = [
    (("--encryption",), "encryption", {"choices": ENCRYPTIONS, "help": (
        "CurveZMQ encryption of a kernel on another node's channels: auto (where the image's "
        "ipykernel applies it), required (else the start fails), off.")}),
    (("--inject-kernel",), "inject_kernel", {"choices": INJECT_MODES, "help": (
        "Provide ipykernel from the host, without changing the image: auto (when the image's "
        "python lacks it), always, never.")}),
    (("--inject-wheels",), "inject_wheels", {"metavar": "DIR", "help": (
        "Take the provided ipykernel's wheels from DIR, not the package index (offline).")}),
]  # fmt: skip


def add_settings_arguments(add_argument, kernel: bool = False, only=None) -> None:
    """Declare the settings' flags with `add_argument` (argparse's, or magic_arguments'), with
    the kernel's own too if `kernel`; `only` these settings' if given."""
    for flags, trait, keywords in [*ARGUMENTS, *(KERNEL_ARGUMENTS if kernel else ())]:
        if only is None or trait in only:
            add_argument(*flags, dest=trait, **keywords)


def settings_from_arguments(namespace) -> dict:
    """The settings given on a command line (flags left out are absent, not defaults)."""
    values = {}
    for _, trait, _ in [*ARGUMENTS, *KERNEL_ARGUMENTS]:
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

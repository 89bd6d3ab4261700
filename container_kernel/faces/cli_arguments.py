"""The settings' command-line spelling, shared by the CLI and the %%container magic."""

from __future__ import annotations

import argparse

from ..ground.errors import ContainerKernelError
from ..settings import ENCRYPTIONS, GPU_MODES, INJECT_MODES, PLACEMENTS, ContainerSettings


def _gpu_value(text: str) -> str:
    """`--gpu VALUE`: a bare `--gpu` takes the next word, so a wrong one says how to avoid it."""
    if text.lower() not in GPU_MODES:
        msg = (
            f"takes {', '.join(GPU_MODES)}, not {text!r} (a bare --gpu before IMAGE or COMMAND: "
            "write --gpu=nvidia)"
        )
        raise argparse.ArgumentTypeError(msg)
    return text.lower()


def _help(trait: str, also: str = "") -> str:
    """A flag's help: its setting's (one source for the trait, the flag and docs/settings.md),
    with what only the flag has."""
    text = " ".join(ContainerSettings.class_traits()[trait].help.split())
    return f"{text} {also}".strip().replace("%", "%%")  # (argparse formats help with %)


def _flag(flags: tuple[str, ...], trait: str, also: str = "", **keywords) -> tuple:
    return flags, trait, {**keywords, "help": _help(trait, also)}


# Command-line spelling of the settings, shared by the CLI and the %%container magic: (flags,
# trait, argparse keywords). Every setting has one, but those its trait says have none (no_flag).
ARGUMENTS: list[tuple[tuple[str, ...], str, dict]] = [
    _flag(("--runtime",), "runtime", metavar="NAME"),
    _flag(("--runtime-path",), "runtime_path", metavar="PATH"),
    _flag(("-B", "--bind"), "binds", action="append", metavar="SRC[:DST[:ro|rw]]",
          also="(Repeatable.)"),
    _flag(("--env",), "env", action="append", metavar="NAME=VALUE", also="(Repeatable.)"),
    _flag(("--pass-env",), "pass_env", action="append", metavar="PATTERN",
          also="(Repeatable.)"),
    _flag(("--home",), "home", metavar="persistent|temporary|none|PATH"),
    _flag(("--home-root",), "home_root", metavar="DIR"),
    _flag(("--cleanenv",), "cleanenv", action=argparse.BooleanOptionalAction),
    _flag(("--gpu",), "gpu", nargs="?", const="nvidia", type=_gpu_value,
          metavar="none|nvidia|amd|auto", also="A bare --gpu means nvidia."),
    (("--no-gpu",), "gpu", {"action": "store_const", "const": "none",
                            "help": "No GPUs inside (the default): the same as --gpu none."}),
    _flag(("--threads",), "threads", type=int, metavar="N"),
    _flag(("--share-tmp",), "share_tmp", action=argparse.BooleanOptionalAction),
    _flag(("--placement",), "placement", choices=PLACEMENTS),
    (("--launcher",), "placement", {"choices": PLACEMENTS, "help": argparse.SUPPRESS}),
    _flag(("--slurm-arg",), "slurm_args", action="append", metavar="ARG",
          also="(Repeatable; --slurm-arg=--partition=gpu.)"),
    _flag(("--slurm-start-timeout",), "slurm_start_timeout", type=float, metavar="SECONDS"),
    _flag(("--image-cache",), "image_cache", metavar="DIR"),
    _flag(("--image-cache-shared",), "image_cache_shared", action="append", metavar="DIR",
          also="(Repeatable.)"),
    _flag(("--pull-arg",), "pull_args", action="append", metavar="ARG",
          also="(Repeatable; --pull-arg=--no-https.)"),
    _flag(("--runtime-arg",), "runtime_args", action="append", metavar="ARG",
          also="(Repeatable; --runtime-arg=--rocm.)"),
]  # fmt: skip


# What only a kernel has (the CLI's spec commands; a %%container cell has no channels).
KERNEL_ARGUMENTS: list[tuple[tuple[str, ...], str, dict]] = [
    _flag(("--encryption",), "encryption", choices=ENCRYPTIONS),
    _flag(("--inject-kernel",), "inject_kernel", choices=INJECT_MODES),
    _flag(("--inject-wheels",), "inject_wheels", metavar="DIR"),
    _flag(("--standby",), "standby", action=argparse.BooleanOptionalAction),
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
    for trait in dict.fromkeys(trait for _, trait, _ in [*ARGUMENTS, *KERNEL_ARGUMENTS]):
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


def settings_reference() -> str:
    """docs/settings.md: every setting with its values, default, flag and help, from the
    traits (`python -m container_kernel.faces.cli_arguments > docs/settings.md`; a test keeps
    the file equal to this)."""
    flags: dict[str, list[str]] = {}
    for names, trait, keywords in [*ARGUMENTS, *KERNEL_ARGUMENTS]:
        if keywords["help"] != argparse.SUPPRESS:
            negated = keywords.get("action") is argparse.BooleanOptionalAction
            spelled = [*names, *(f"--no-{name[2:]}" for name in names if negated)]
            flags.setdefault(trait, []).extend(spelled)
    lines = [
        "# Settings",
        "",
        "<!-- Generated from the traits: python -m container_kernel.faces.cli_arguments -->",
        "",
        "Every face reads the same settings: a kernel spec's `metadata.kernel_provisioner.config`,",
        "the site's Jupyter config files (`c.ContainerSettings.NAME = ...`), `%config",
        "ContainerMagics.NAME`, and the flags of `container-kernel` and `%%container`.",
        "",
    ]
    for name, trait in sorted(ContainerSettings.class_traits(config=True).items()):
        help_text = " ".join(trait.help.split())
        values = getattr(trait, "values", None)
        kind = (
            f"one of {', '.join(f'`{v}`' for v in values)}"
            if values
            else _KINDS.get(type(trait).__name__, type(trait).__name__)
        )
        default = "" if "default" in help_text.lower() else f", default `{trait.default()!r}`"
        where = ", ".join(f"`{flag}`" for flag in flags.get(name, ()))
        where = f"flag {where}" if where else f"no flag: {trait.metadata['no_flag']}"
        lines += [f"## `{name}`", "", f"{kind}{default}; {where}.", "", help_text, ""]
    return "\n".join(lines)


_KINDS = {"Unicode": "text", "List": "list of text", "Dict": "name-value pairs", "Bool": "true or "
          "false", "Int": "integer", "Float": "number"}  # fmt: skip


if __name__ == "__main__":
    print(settings_reference(), end="")

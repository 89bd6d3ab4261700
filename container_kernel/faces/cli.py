"""Manage Jupyter kernel specs whose kernel runs in a container image (Apptainer, Singularity,
Charliecloud)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from traitlets import TraitError

from ..ground.errors import ContainerKernelError
from ..images.resolve import check_image
from ..launch.homes import persistent_home_path
from ..settings import ContainerSettings
from . import cli_cache as cache_commands
from . import doctor
from . import install as installer
from . import kernelspecs as kernelspec
from .cli_arguments import add_settings_arguments, settings_from_arguments
from .sync import Sync

EPILOG = """examples:
  container-kernel install /images/stack.sif --bind /scratch   # for you
  container-kernel sync /images --system                       # one spec per image, for all
  container-kernel list
  container-kernel check stack                                 # what works, what does not
  container-kernel remove stack"""


def cmd_install(args: argparse.Namespace) -> int:
    """One spec per kernel the image has (see installer.py). The spec says only what the flags
    say: the site's settings apply when it runs, so they reach the image check here, never the
    kernel.json."""
    flags = settings_from_arguments(args)
    image = check_image(args.image) if args.check else _absolute(args.image)
    settings = ContainerSettings(image=image, site=False, **flags)  # the spec's own alone
    if args.check:
        effective = ContainerSettings(image=image, **flags)
        cache_commands.pull_first(effective)
        found = installer.plan_kernels(
            settings, effective, interpreter=args.python, display_name=args.display_name
        )
        installer.report(image, found)
        if args.list_kernels:
            return 0
        planned = installer.choose(found, args.kernel)
    else:
        if args.list_kernels or args.kernel:
            msg = "--list-kernels and --kernel look into the image: not with --no-check."
            raise ContainerKernelError(msg)
        if "://" not in image and not Path(image).exists():
            print(
                f"container-kernel install: warning: {image} does not exist (yet); its kernel "
                "will not start until it does.",
                file=sys.stderr,
            )
        interpreter = args.python or "python3"
        spec = kernelspec.kernel_dict(settings, args.display_name, interpreter)
        found = planned = [installer.Planned(installer.PYTHON_KERNEL, spec)]
    base = (args.name or kernelspec.default_kernel_name(args.image)).lower()  # as jupyter_client
    where = _where(args)
    for item in planned:
        name = installer.spec_name(base, item.kernel, found)
        if kernelspec.installed_unchanged(
            item.spec, kernelspec.destination(name, **where), item.logos
        ):
            print(f"Kernel spec {name!r} is installed already, unchanged.")
            continue
        folder = kernelspec.install(item.spec, name, logos=item.logos, **where)
        print(f"Installed kernel spec {name!r} ({item.spec['display_name']}) in {folder}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """See sync.py; the same destinations as install."""
    sync = Sync(
        folder=Path(_absolute(args.folder)),
        kernels=kernelspec.kernels_folder(**_where(args)),
        flags=settings_from_arguments(args),
        interpreter=args.python,
        check=args.check,
        dry_run=args.dry_run,
    )
    return sync.run()


def cmd_list(args: argparse.Namespace) -> int:
    """A spec whose image is gone still shows in JupyterLab and fails at start: flag it."""
    installed = kernelspec.container_specs()
    specs = [kernelspec.describe(name, entry) for name, entry in installed.items()]
    if args.json:
        print(json.dumps({spec.pop("name"): spec for spec in specs}, indent=2))
        return 0
    if not specs:
        print("No container kernel specs. Add one: container-kernel install IMAGE")
        return 0
    rows = [("NAME", "DISPLAY NAME", "RUNTIME", "IMAGE", "")] + [
        (s["name"], s["display_name"], s["runtime"], s["image"],
         "missing" if s["image_exists"] is False else "")
        for s in specs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]).rstrip())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """An installed spec by its name, else an image by its path (see doctor.py)."""
    specs = kernelspec.container_specs()
    flags = settings_from_arguments(args)
    report = doctor.Report()
    if args.target in specs:
        if flags or args.python:
            msg = f"{args.target!r} is a kernel spec: its settings are in its kernel.json."
            raise ContainerKernelError(msg)
        doctor.check_spec(args.target, specs[args.target], report)
    elif "/" in args.target or Path(args.target).exists():
        doctor.check_image(_absolute(args.target), flags, args.python or "python3", report)
    else:
        msg = (
            f"No container kernel spec named {args.target!r}, and no image by that path; see "
            "`container-kernel list`."
        )
        raise ContainerKernelError(msg)
    return 1 if report.failed else 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Only container specs, through jupyter_client; the fake homes stay (users' files)."""
    specs = kernelspec.container_specs()
    unknown = [name for name in args.names if name not in specs]
    if unknown:
        msg = f"Not a container kernel spec: {', '.join(unknown)}; see `container-kernel list`."
        raise ContainerKernelError(msg)
    manager = kernelspec.KernelSpecManager()
    for name in args.names:
        home = _kept_home(name, specs[name]["spec"])
        print(f"Removed {manager.remove_kernel_spec(name)}{home}")
    return 0


def _kept_home(name: str, spec: dict) -> str:
    """Where the removed spec's home stays, to say so: an admin may want it gone too."""
    try:
        settings = kernelspec.spec_settings(spec)
    except (ContainerKernelError, TraitError):
        settings = ContainerSettings()
    if settings.home == "persistent":
        home = persistent_home_path(settings.home_root, name)
        return f"; its fake home is kept: {home}" if home.exists() else ""
    if settings.home not in ("temporary", "none"):
        return f"; its home folder is kept: {settings.home}"
    return ""


def _absolute(image: str) -> str:
    return image if "://" in image else str(Path(image).expanduser().absolute())


def _where(args: argparse.Namespace) -> dict:
    return {"user": not args.system, "prefix": args.prefix}


def _add_destination(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--user", action="store_true", help="Install to the per-user kernel registry (the default)."
    )
    where.add_argument(
        "--system",
        action="store_true",
        help="Install system-wide, for every user (e.g. JupyterHub).",
    )
    where.add_argument(
        "--prefix",
        metavar="PREFIX",
        help="Install to PREFIX/share/jupyter/kernels, e.g. an environment's.",
    )
    where.add_argument("--sys-prefix", action="store_const", const=sys.prefix, dest="prefix",
                       help=f"Install to Python's sys.prefix ({sys.prefix}).")  # fmt: skip


def _add_python(
    parser: argparse.ArgumentParser, default: str | None = "python3", detail: str = ""
) -> None:
    parser.add_argument("--python", default=default, metavar="INTERPRETER", help=(
        f"The Python inside the image ({detail or 'default: python3'})."))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="container-kernel", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    install = commands.add_parser(
        "install", help="Install a kernel spec for an image.",
        description="Install a kernel spec for each kernel IMAGE has: the kernel specs it "
        "ships (R's IRkernel...) and its python3 with ipykernel. The image is run first to "
        "find them; one kernel is named after the image, several IMAGE-KERNEL.",
    )  # fmt: skip
    install.add_argument(
        "image",
        metavar="IMAGE",
        help="A SIF file, a sandbox folder, a SquashFS file or a docker:// URI.",
    )
    install.add_argument("--name", help="The kernel spec's name (default: the image's file name).")
    install.add_argument("--display-name", default="", help="The name shown in JupyterLab.")
    _add_python(install, default=None, detail="default: every kernel found in the image")
    install.add_argument(
        "--kernel",
        action="append",
        metavar="KERNEL",
        help=(
            "Install only this kernel of the image (its folder's name: ir, python3; repeatable)."
        ),
    )
    install.add_argument("--list-kernels", action="store_true",
                         help="Only show the kernels found in the image.")  # fmt: skip
    _add_destination(install)
    install.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="Do not run the image first: it may not exist yet (a warning).",
    )
    add_settings_arguments(install.add_argument, kernel=True)
    install.set_defaults(run=cmd_install)

    sync = commands.add_parser(
        "sync", help="Keep one kernel spec per image in a folder.",
        description="Install a kernel spec for every image in DIR (SIF, SquashFS files, sandbox "
        "folders), update those whose spec changed, and remove those whose image is gone "
        "(only specs sync made). One line per spec; safe to run from cron.",
    )  # fmt: skip
    sync.add_argument("folder", metavar="DIR", help="The folder of images.")
    _add_python(sync, default=None, detail="default: every kernel found, with --check")
    _add_destination(sync)
    sync.add_argument(
        "--dry-run", action="store_true", help="Print what would change, and change nothing."
    )
    sync.add_argument(
        "--check",
        action="store_true",
        help="Run each image first: every kernel found gets a spec (slower); a failing image "
        "is skipped.",
    )
    add_settings_arguments(sync.add_argument, kernel=True)
    sync.set_defaults(run=cmd_sync)

    listing = commands.add_parser("list", help="List installed container kernel specs.",
                                  description="List installed container kernel specs, their "
                                  "images, and whether each image still exists.")  # fmt: skip
    listing.add_argument(
        "--json",
        action="store_true",
        help="Output the specs and their images as machine-readable JSON.",
    )
    listing.set_defaults(run=cmd_list)

    check = commands.add_parser(
        "check", help="Check that a kernel spec or an image starts a kernel.",
        description="Check the runtime, the image, its Python and ipykernel, then start a real "
        "kernel. One line per check, `ok` or `FAIL` with the fix; exit status 1 on any FAIL. "
        "Settings flags go with an IMAGE only.",
    )  # fmt: skip
    check.add_argument("target", metavar="NAME|IMAGE", help="A kernel spec's name, or an image.")
    _add_python(check, default=None)
    add_settings_arguments(check.add_argument, kernel=True)
    check.set_defaults(run=cmd_check)

    remove = commands.add_parser(
        "remove", aliases=["uninstall"], help="Remove one or more container kernel specs by name.",
        description="Remove one or more container kernel specs by name. Their fake homes, which "
        "hold the users' files, are kept.",
    )  # fmt: skip
    remove.add_argument("names", nargs="+", metavar="NAME", help="A kernel spec's name.")
    remove.set_defaults(run=cmd_remove)
    cache_commands.add_commands(commands, add_settings_arguments)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ContainerKernelError, TraitError, OSError, ValueError) as err:
        print(f"container-kernel {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`container-kernel`: install, list, check and remove kernel specs that run in a container."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from traitlets import TraitError

from . import kernelspec
from .errors import ContainerKernelError, runtime_message
from .kernel import command_inside
from .launch import check_image, plan
from .sessions import Session
from .settings import ContainerSettings, add_settings_arguments, settings_from_arguments

PROBE = (
    "import sys, platform; import ipykernel; "
    "print(sys.executable, platform.python_version(), ipykernel.__version__)"
)


def probe(settings: ContainerSettings, interpreter: str = "python3") -> str:
    """Run the interpreter in the image and import ipykernel: what a kernel start needs.

    Returns "EXECUTABLE PYTHON_VERSION IPYKERNEL_VERSION"; raises with the runtime's message.
    """
    session = Session.create()
    try:
        launch = plan(
            settings, [interpreter, "-c", PROBE], cwd="/", home=None, host_env=os.environ,
            session=session,
        )  # fmt: skip
        out = subprocess.run(
            launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True, check=False
        )
    finally:
        session.end()
    if out.returncode != 0:
        msg = (
            f"{interpreter} with ipykernel does not run in {settings.image}: "
            f"{runtime_message(out.stderr.splitlines()[-6:])}"
        )
        raise ContainerKernelError(msg)
    return out.stdout.strip()


def cmd_install(args: argparse.Namespace) -> int:
    settings = ContainerSettings(image=check_image(args.image), **settings_from_arguments(args))
    name = (args.name or kernelspec.default_kernel_name(args.image)).lower()  # as jupyter_client
    spec = kernelspec.kernel_dict(settings, args.display_name, args.python)
    where = {"user": not args.system, "prefix": args.prefix}
    if kernelspec.installed_unchanged(spec, kernelspec.destination(name, **where)):
        print(f"Kernel spec {name!r} is installed already, unchanged.")
        return 0
    if args.check:
        print(f"checking {settings.image}: {probe(settings, args.python)}")
    folder = kernelspec.install(spec, name, **where)
    print(f"Installed kernel spec {name!r} ({spec['display_name']}) in {folder}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    specs = kernelspec.container_specs()
    if args.json:
        print(json.dumps(specs, indent=2))
        return 0
    if not specs:
        print(
            "No kernel specs use the container provisioner. Add one: container-kernel install IMAGE"
        )
    for name, entry in specs.items():
        config = entry["spec"]["metadata"]["kernel_provisioner"].get("config", {})
        print(f"{name:24} {config.get('image', '?')}  [{entry['resource_dir']}]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    specs = kernelspec.container_specs()
    if args.name not in specs:
        msg = f"No container kernel spec named {args.name!r}; see `container-kernel list`."
        raise ContainerKernelError(msg)
    spec = specs[args.name]["spec"]
    settings = kernelspec.spec_settings(spec)
    print(f"{args.name}: {probe(settings, command_inside(spec['argv'])[0])}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    specs = kernelspec.container_specs()
    unknown = [name for name in args.names if name not in specs]
    if unknown:
        msg = f"Not a container kernel spec: {', '.join(unknown)}; see `container-kernel list`."
        raise ContainerKernelError(msg)
    manager = kernelspec.KernelSpecManager()
    for name in args.names:
        print(f"Removed {manager.remove_kernel_spec(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="container-kernel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    install = commands.add_parser("install", help="install a kernel spec for an image")
    install.add_argument("image", help="SIF file or image directory (or a docker:// URI)")
    install.add_argument("--name", help="kernel spec name (default: from the image's file name)")
    install.add_argument("--display-name", default="", help="name shown in JupyterLab")
    install.add_argument(
        "--python", default="python3", help="the interpreter inside the image (default: python3)"
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for the current user (default)")
    where.add_argument("--system", action="store_true", help="system-wide (e.g. JupyterHub)")
    where.add_argument("--prefix", help="under PREFIX/share/jupyter/kernels")
    where.add_argument(
        "--sys-prefix", action="store_const", const=sys.prefix, dest="prefix",
        help=f"in this Python environment ({sys.prefix})",
    )  # fmt: skip
    install.add_argument(
        "--no-check", dest="check", action="store_false",
        help="do not check first that the image runs python with ipykernel",
    )  # fmt: skip
    add_settings_arguments(install.add_argument)
    install.set_defaults(run=cmd_install)

    listing = commands.add_parser("list", help="list kernel specs that run in a container")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=cmd_list)

    check = commands.add_parser("check", help="check that a kernel spec's image can run a kernel")
    check.add_argument("name")
    check.set_defaults(run=cmd_check)

    remove = commands.add_parser("remove", help="remove kernel specs (their fake homes are kept)")
    remove.add_argument("names", nargs="+", metavar="name")
    remove.set_defaults(run=cmd_remove)
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

"""`container-kernel` through its real command line, with isolated Jupyter folders."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from container_kernel.faces import cli
from container_kernel.faces.cli_arguments import (
    ARGUMENTS,
    KERNEL_ARGUMENTS,
    settings_from_arguments,
    settings_reference,
)
from container_kernel.faces.kernelspecs import logo_files
from container_kernel.settings import ContainerSettings

GIVEN = ("runtime", "runtime_path", "binds", "env", "pass_env", "home", "home_root", "cleanenv",
         "gpu", "share_tmp", "runtime_args")  # fmt: skip
RUNTIME_ARG = {"apptainer": "--env=EXTRA=1", "charliecloud": "--set-env=EXTRA=1"}
LAUNCHER = [
    sys.executable, "-m", "container_kernel.faces.spec_argv", "--spec-dir", "{resource_dir}",
    "--connection-file", "{connection_file}", "--",
]  # fmt: skip


def container_kernel(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "container_kernel.faces.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def jupyter_folders(tmp_path: Path, monkeypatch) -> Path:
    """User, system (XDG_DATA_DIRS, under JUPYTER_PLATFORM_DIRS) and config folders of our own."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "system"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return tmp_path


@pytest.fixture
def isolated(tmp_path, monkeypatch, runtime):
    """Jupyter folders of our own; `runtime` puts the runtime under test on PATH."""
    return jupyter_folders(tmp_path, monkeypatch)


def installed(folder: Path) -> dict:
    return json.loads((folder / "kernel.json").read_text())


def test_install_list_check_remove(isolated, image, runtime):
    out = container_kernel(
        "install", str(image), "--runtime", runtime, "--name", "stack",
        "--display-name", "My stack", "-B", "/srv", "--env", "A=$(x),y", "--pass-env", "OMP_*",
        "--home", "temporary", f"--runtime-arg={RUNTIME_ARG[runtime]}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "checking" in out.stdout
    assert "/usr/bin/python3 3.11" in out.stdout
    folder = isolated / "user" / "kernels" / "stack"
    spec = installed(folder)
    assert spec["display_name"] == "My stack"
    # the launcher by an absolute path (never PATH), then the kernel's argv inside, with the
    # interpreter of the image's own Python spec; 3.11, so frozen modules go off, as ipykernel's
    # own spec does
    assert spec["argv"] == [
        *LAUNCHER, "/usr/bin/python3", "-Xfrozen_modules=off", "-m", "ipykernel_launcher",
        "-f", "{connection_file}",
    ]  # fmt: skip
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "container-provisioner",
        "config": {
            "image": str(image),
            "runtime": runtime,
            "binds": ["/srv"],
            "env": {"A": "$(x),y"},
            "pass_env": ["OMP_*"],
            "home": "temporary",
            "runtime_args": [RUNTIME_ARG[runtime]],
        },
    }
    assert spec["metadata"]["container_kernel"]["probe"]["python"].startswith("3.11")
    # the Python logos of ipykernel's own spec, for JupyterLab's Launcher
    assert set(logo_files()) == {"logo-32x32.png", "logo-64x64.png", "logo-svg.svg"}
    for name, data in logo_files().items():
        assert (folder / name).read_bytes() == data

    again = container_kernel("install", str(image), "--runtime", runtime, "--name", "stack",
                             "--display-name", "My stack", "-B", "/srv", "--env", "A=$(x),y",
                             "--pass-env", "OMP_*", "--home", "temporary",
                             f"--runtime-arg={RUNTIME_ARG[runtime]}")  # fmt: skip
    assert "installed already, unchanged" in again.stdout

    listing = container_kernel("list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "DISPLAY", "NAME", "RUNTIME", "IMAGE"]
    assert listing[1].split() == ["stack", "My", "stack", runtime, str(image)]
    listed = json.loads(container_kernel("list", "--json").stdout)
    assert list(listed) == ["stack"]
    assert listed["stack"]["image_exists"] is True
    assert listed["stack"]["runtime"] == runtime
    assert listed["stack"]["resource_dir"] == str(folder)

    check = container_kernel("check", "stack")
    assert check.returncode == 0, check.stdout + check.stderr
    assert all(line.startswith("ok   ") for line in check.stdout.splitlines())
    assert "ok   kernel: started, kernel_info reply in" in check.stdout

    removed = container_kernel("remove", "stack")
    assert removed.returncode == 0
    assert removed.stdout.strip() == f"Removed {folder}"  # a temporary home: nothing kept
    assert not folder.exists()


def test_install_with_prefix_and_default_name(isolated, image, runtime):
    out = container_kernel(
        "install", str(image), "--runtime", runtime, "--prefix", str(isolated / "p"), "--no-check"
    )
    assert out.returncode == 0, out.stderr
    spec = installed(isolated / "p/share/jupyter/kernels/bookworm-ipykernel")
    assert "checking" not in out.stdout
    # not probed: nothing known of its Python, so no -X flag and no debugger claimed
    assert spec["argv"] == [*LAUNCHER, "python3", "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"]  # fmt: skip
    assert spec["metadata"]["debugger"] is False
    assert "container_kernel" not in spec["metadata"]


@pytest.mark.parametrize("where", ["--user", "--system", None])
def test_install_destinations(tmp_path, monkeypatch, where):
    jupyter_folders(tmp_path, monkeypatch)
    args = ["install", "/images/a.sif", "--no-check", "--python", "/opt/py/bin/python3"]
    out = container_kernel(*args, *([where] if where else []))
    assert out.returncode == 0, out.stderr
    root = tmp_path / ("system/jupyter" if where == "--system" else "user")
    spec = installed(root / "kernels" / "a")
    assert spec["argv"][len(LAUNCHER)] == "/opt/py/bin/python3"
    assert container_kernel("install", "/images/a.sif", "--system", "--user").returncode == 2


def test_install_sys_prefix_goes_in_that_environment(tmp_path, monkeypatch):
    """A throwaway environment that sees ours: --sys-prefix writes into it, not into .venv."""
    jupyter_folders(tmp_path, monkeypatch)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True)
    ours = sysconfig.get_paths()["purelib"]
    purelib = subprocess.run(
        [env / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "ours.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    out = container_kernel("install", "/images/b.sif", "--no-check", "--sys-prefix",
                           python=str(env / "bin/python"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (env / "share/jupyter/kernels/b/kernel.json").exists()


def test_install_no_check_accepts_a_missing_image_with_a_warning(tmp_path, monkeypatch):
    jupyter_folders(tmp_path, monkeypatch)
    out = container_kernel("install", "/images/future.sif", "--no-check")
    assert out.returncode == 0
    assert out.stderr.strip().splitlines() == [
        "container-kernel install: warning: /images/future.sif does not exist (yet); its kernel "
        "will not start until it does."
    ]
    listing = container_kernel("list").stdout.splitlines()
    assert listing[1].split()[-2:] == ["/images/future.sif", "missing"]
    assert json.loads(container_kernel("list", "--json").stdout)["future"]["image_exists"] is False


def test_remove_says_where_the_fake_home_stays(isolated, image, runtime):
    assert container_kernel("install", str(image), "--name", "kept").returncode == 0
    assert container_kernel("check", "kept").returncode == 0  # a kernel start makes its home
    home = isolated / "user" / "container-kernel" / "homes" / "kept"
    assert home.is_dir()
    out = container_kernel("uninstall", "kept")  # jupyter kernelspec's alias
    assert out.returncode == 0, out.stderr
    folder = isolated / "user" / "kernels" / "kept"
    assert out.stdout.strip() == f"Removed {folder}; its fake home is kept: {home}"
    assert home.is_dir()


def test_site_settings_are_not_baked_into_specs(isolated, image, runtime):
    """A site's c.ContainerSettings reach the image check, never the kernel.json."""
    config = isolated / "config"
    config.mkdir()
    site = {"ContainerSettings": {"env": {"SITE": "1"}, "binds": [str(isolated / "scratch")]}}
    (config / "jupyter_config.json").write_text(json.dumps(site))
    out = container_kernel("install", str(image), "--name", "s")
    assert out.returncode == 1  # the site's bind source is missing: its check says so
    assert "Bind source does not exist" in out.stderr
    (isolated / "scratch").mkdir()
    assert container_kernel("install", str(image), "--name", "s").returncode == 0
    config_written = installed(isolated / "user" / "kernels" / "s")["metadata"]
    assert config_written["kernel_provisioner"]["config"] == {"image": str(image)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["install", "/nonexistent.sif"], "Image not found: /nonexistent.sif"),
        (["install", "IMAGE", "-B", "data:/x"], "Malformed bind 'data:/x'"),
        (["install", "IMAGE", "--env", "NOVALUE"], "--env takes NAME=VALUE"),
        (["install", "IMAGE", "--home", "somewhere"], "home must be one of"),
        (["check", "nope"], "No container kernel spec named 'nope'"),
        (["remove", "nope"], "Not a container kernel spec: nope"),
        (["sync", "/nonexistent-images"], "No image folder /nonexistent-images"),
        (["sync", "IMAGE/..", "--home", "somewhere"], "home must be one of"),
    ],
)
def test_bad_input_gets_one_line(isolated, image, args, message):
    out = container_kernel(*[a.replace("IMAGE", str(image)) for a in args])
    assert out.returncode == 1
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_image_without_python_is_refused_at_install(isolated, tmp_path, runtime):
    empty_image = tmp_path / "empty-image"
    (empty_image / "tmp").mkdir(parents=True)
    out = container_kernel("install", str(empty_image), "--runtime", runtime)
    assert out.returncode == 1
    assert "python3 does not run in" in out.stderr
    assert not (isolated / "user" / "kernels").exists()


def test_every_setting_has_a_flag_on_every_face():
    """Derived from the traits: a new setting without a flag (or a `no_flag` reason) fails."""
    traits = ContainerSettings.class_traits(config=True)
    flagged = {trait for _, trait, _ in [*ARGUMENTS, *KERNEL_ARGUMENTS]}
    without = {name for name, trait in traits.items() if trait.metadata.get("no_flag")}
    assert flagged | without == set(traits), f"no flag for {set(traits) - flagged - without}"
    assert not flagged & without
    for command in ("install", "sync", "check"):
        parser = next(
            action for action in cli.build_parser()._subparsers._group_actions[0].choices.values()
            if action.prog.endswith(command)
        )  # fmt: skip
        dests = {action.dest for action in parser._actions}
        assert flagged <= dests, f"{command} lacks {flagged - dests}"
    for _, trait, keywords in [*ARGUMENTS, *KERNEL_ARGUMENTS]:  # one help: the trait's
        if keywords["help"] != argparse.SUPPRESS and "--gpu none" not in keywords["help"]:
            first = " ".join(traits[trait].help.split()).replace("%", "%%")[:60]
            assert keywords["help"].startswith(first)


def test_every_settings_flag_reaches_a_setting():
    for command in ("install", "sync", "check"):
        args = cli.build_parser().parse_args(
            [command, "img", "--runtime", "apptainer", "--runtime-path", "/x", "-B", "/a",
             "--env", "K=V", "--pass-env", "P*", "--home", "none", "--home-root", "/h",
             "--no-cleanenv", "--gpu", "--share-tmp", "--runtime-arg=--rocm"]
        )  # fmt: skip
        values = settings_from_arguments(args)
        assert set(values) == set(GIVEN)
        assert values["env"] == {"K": "V"}
        assert values["cleanenv"] is False
        assert values["share_tmp"] is True


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ([], ["install", "sync", "list", "check", "remove", "examples:"]),
        (["install"], ["--bind", "--pass-env", "--home", "--no-cleanenv", "--gpu", "--sys-prefix",
                       "--system", "--user", "--prefix", "--no-check", "--python", "--name",
                       "--display-name", "Install to the per-user kernel registry"]),
        (["sync"], ["DIR", "--dry-run", "--check", "--system", "--sys-prefix", "--bind", "cron"]),
        (["list"], ["--json", "machine-readable"]),
        (["check"], ["NAME|IMAGE", "--python", "--bind", "FAIL"]),
        (["remove"], ["NAME", "fake homes"]),
    ],
)  # fmt: skip
def test_help_reads_like_jupyter_kernelspec(command, flags):
    out = container_kernel(*command, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag in flags:
        assert flag in text
    if command and command[0] in ("install", "sync", "check"):  # every setting, as a flag
        shown = [names for names, _, kw in ARGUMENTS if kw["help"] != argparse.SUPPRESS]
        assert all(names[-1] in text for names in shown)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "container-kernel"
    assert subprocess.run([script, "--help"], capture_output=True, check=False).returncode == 0
    assert os.access(script, os.X_OK)


def test_the_settings_reference_is_generated_from_the_traits():
    """docs/settings.md is what the traits say (regenerate it: see its first lines)."""
    reference = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
    assert reference.read_text() == settings_reference(), (
        "docs/settings.md is stale: python -m container_kernel.faces.cli_arguments > "
        "docs/settings.md"
    )

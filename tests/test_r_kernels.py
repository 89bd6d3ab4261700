"""Kernels an image ships, R's IRkernel first: found by `container-kernel install IMAGE` without
naming R, run with the same clean environment, fake home and interrupts as Python, plus what R
needs (a user library in the fake home, no real `.Rprofile`/`.Renviron`, a UTF-8 locale)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient
from kernels import running_kernel

from container_kernel.faces import cli


def run_r(kc: BlockingKernelClient, code: str, timeout: float = 60) -> tuple[str, str]:
    """(the reply's status, what the cell printed)."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"]["status"], "".join(out)


def install(image: Path, capsys, *flags: str) -> str:
    assert cli.main(["install", *flags, str(image)]) == 0
    return capsys.readouterr().out


def installed() -> dict[str, dict]:
    folder = Path(os.environ["JUPYTER_DATA_DIR"], "kernels")
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/kernel.json"))}


def test_install_finds_every_kernel_in_the_image(jupyter_dirs, r_image, image, runtime, capsys):
    listed = install(r_image, capsys, "--runtime", runtime, "--list-kernels")
    assert "2 kernels" in listed
    assert "ir: R: R --slave -e IRkernel::main()" in listed
    assert "python3: Python: /usr/bin/python3 3." in listed
    assert not (jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels").exists()  # only shown
    install(r_image, capsys, "--runtime", runtime)
    specs = installed()
    assert sorted(specs) == ["bookworm-r-ir", "bookworm-r-python3"]
    r_spec = specs["bookworm-r-ir"]
    assert (r_spec["display_name"], r_spec["language"]) == ("R (bookworm-r)", "R")
    assert r_spec["argv"][-6:] == ["R", "--slave", "-e", "IRkernel::main()", "--args",
                                   "{connection_file}"]  # fmt: skip
    assert specs["bookworm-r-python3"]["language"] == "python"
    logo = jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels" / "bookworm-r-ir" / "logo-64x64.png"
    shipped = r_image / "usr/share/jupyter/kernels/ir/logo-64x64.png"
    assert logo.read_bytes() == shipped.read_bytes()
    # one kernel of the image by name: the same name as when all are installed
    install(image, capsys, "--runtime", runtime, "--kernel", "python3")
    assert "bookworm-ipykernel" in installed()  # an image of one kernel keeps the plain name
    assert cli.main(["install", "--runtime", runtime, "--kernel", "julia", str(r_image)]) != 0
    assert capsys.readouterr().err.startswith(
        "container-kernel install: error: No kernel 'julia' in the image; it has: python3, ir"
    )


@pytest.fixture
def r_kernel(jupyter_dirs, r_image, runtime, capsys, tmp_path) -> str:
    home_root = tmp_path / "homes"
    install(r_image, capsys, "--runtime", runtime, "--kernel", "ir", "--home-root", str(home_root))
    return "bookworm-r-ir"


def test_an_r_kernel_runs_in_the_image_and_is_interrupted_once(r_kernel, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    with running_kernel(r_kernel, str(project)) as (km, kc):
        status, out = run_r(
            kc,
            "cat(R.version.string, .libPaths()[1], file.access(.libPaths()[1], 2), "
            'Sys.getenv("LANG"), "h\\u00e9llo", sep="\\n")',
        )
        assert status == "ok", out
        version, library, writable, lang, text = out.splitlines()
        assert version.startswith("R version 4.")
        # the fake home's library, created before the start (R ignores a missing one)
        assert library == f"{Path('~').expanduser()}/R/library"
        assert (tmp_path / "homes" / r_kernel / "R" / "library").is_dir()
        assert writable == "0"
        assert (lang, text) == ("C.UTF-8", "h\u00e9llo")
        kc.execute("Sys.sleep(60)")
        time.sleep(1)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=20)
        assert reply["content"]["status"] == "abort"  # IRkernel's answer to SIGINT
        assert time.monotonic() - started < 5
        # once: a second SIGINT would stop this one too; the kernel lives on
        assert run_r(kc, 'Sys.sleep(2); cat("after")') == ("ok", "after")


CODE = (
    'cat(if (is.null(getOption("ck_from"))) "none" else getOption("ck_from"), '
    'Sys.getenv("CK_FROM", "none"), sep="|")'
)


def test_r_reads_a_projects_profile_never_the_real_homes(r_kernel, tmp_path, monkeypatch):
    real = tmp_path / "real-home"
    project = tmp_path / "project"
    for folder in (real, project):
        folder.mkdir()
        (folder / ".Rprofile").write_text(f'options(ck_from = "{folder.name}")\n')
        (folder / ".Renviron").write_text(f"CK_FROM={folder.name}\n")
    with running_kernel(r_kernel, str(project)) as (_, kc):
        assert run_r(kc, CODE) == ("ok", "project|project")  # renv's way in works
    monkeypatch.setenv("HOME", str(real))  # a notebook opened in the home folder itself
    with running_kernel(r_kernel, str(real)) as (_, kc):
        assert run_r(kc, CODE) == ("ok", "none|none")


def test_check_starts_an_r_kernel(r_kernel, capsys):
    assert cli.main(["check", r_kernel]) == 0
    out = capsys.readouterr().out
    assert "ok   kernel: started, kernel_info reply" in out
    assert "(IRkernel " in out


def test_sync_installs_every_kernel_of_each_image(jupyter_dirs, r_image, runtime, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "rstack").symlink_to(r_image)

    def sync(*flags: str) -> dict[str, str]:
        assert cli.main(["sync", str(images), "--runtime", runtime, *flags]) == 0
        return {line.split()[1]: line.split()[0] for line in capsys.readouterr().out.splitlines()}

    assert sync("--check") == {"rstack-python3": "added", "rstack-ir": "added"}
    assert sync() == {"rstack-python3": "unchanged", "rstack-ir": "unchanged"}  # not run again
    assert sync("--bind", "/srv") == {"rstack-python3": "updated", "rstack-ir": "updated"}
    r_spec = installed()["rstack-ir"]
    assert r_spec["metadata"]["kernel_provisioner"]["config"]["binds"] == ["/srv"]
    assert r_spec["argv"][-6:-4] == ["R", "--slave"]
    logo = jupyter_dirs["JUPYTER_DATA_DIR"] / "kernels" / "rstack-ir" / "logo-64x64.png"
    shipped = r_image / "usr/share/jupyter/kernels/ir/logo-64x64.png"
    assert logo.read_bytes() == shipped.read_bytes()

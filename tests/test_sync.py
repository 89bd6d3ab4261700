"""`container-kernel sync DIR`: one kernel spec per image, kept in step, through the real command
line (images are not run unless --check: most of these are empty stand-ins)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import LAUNCHER, container_kernel, installed, jupyter_folders

from container_kernel.faces.kernelspecs import logo_files


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """Isolated Jupyter folders and an image folder: a SIF file of each suffix, a SquashFS file
    of each, a sandbox folder, and what is not an image."""
    jupyter_folders(tmp_path, monkeypatch)
    images = tmp_path / "images"
    (images / "sandbox" / "usr").mkdir(parents=True)
    (images / "bin-only" / "bin").mkdir(parents=True)
    (images / "not-an-image").mkdir()
    for name in ("a.sif", "b.simg", "c.img", "d.sqfs", "e.squashfs", "notes.txt", ".f.sif"):
        (images / name).write_bytes(b"")
    return tmp_path


def sync(*args: str) -> tuple[int, list[list[str]]]:
    out = container_kernel("sync", *args)
    assert not out.stderr, out.stderr
    return out.returncode, [line.split() for line in out.stdout.splitlines()]


def kernels(root: Path) -> Path:
    return root / "user" / "kernels"


IMAGES = {
    "a": "a.sif", "b": "b.simg", "bin-only": "bin-only", "c": "c.img", "d": "d.sqfs",
    "e": "e.squashfs", "sandbox": "sandbox",
}  # fmt: skip


def test_sync_adds_one_spec_per_image_then_changes_nothing(site):
    images = site / "images"
    status, lines = sync(str(images))
    assert status == 0
    assert lines == [["added", name, str(images / file)] for name, file in IMAGES.items()]
    assert sorted(p.name for p in kernels(site).iterdir() if p.is_dir()) == sorted(IMAGES)
    spec = installed(kernels(site) / "a")
    assert spec["argv"] == [*LAUNCHER, "python3", "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"]  # fmt: skip
    assert spec["display_name"] == "Python 3 (a.sif)"
    assert spec["metadata"]["container_kernel"] == {"synced_from": str(images)}
    assert spec["metadata"]["kernel_provisioner"]["config"] == {"image": str(images / "a.sif")}
    assert spec["metadata"]["debugger"] is False  # not probed
    for name, data in logo_files().items():
        assert (kernels(site) / "a" / name).read_bytes() == data
    listed = json.loads(container_kernel("list", "--json").stdout)
    assert {name: entry["synced_from"] for name, entry in listed.items()} == dict.fromkeys(
        IMAGES, str(images)
    )

    status, lines = sync(str(images))  # idempotent
    assert status == 0
    assert [line[0] for line in lines] == ["unchanged"] * len(IMAGES)


def test_sync_updates_changed_specs_and_removes_only_its_own(site):
    images = site / "images"
    sync(str(images))
    container_kernel("install", "/elsewhere/mine.sif", "--no-check")  # the user's own spec
    (images / "mine.sif").write_bytes(b"")  # an image of the same name: not sync's to replace
    other = site / "other-images"
    other.mkdir()
    (other / "o.sif").write_bytes(b"")
    sync(str(other))  # another folder's sync: not this one's to remove
    (images / "a.sif").unlink()
    (images / "sandbox" / "usr").rmdir()  # no longer an image

    status, lines = sync(str(images), "--bind", "/srv", "--python", "/usr/bin/python3")
    assert status == 0
    verbs = {line[1]: line[0] for line in lines}
    assert verbs == {"a": "removed", "sandbox": "removed", "mine": "skipped",
                     **dict.fromkeys(["b", "bin-only", "c", "d", "e"], "updated")}  # fmt: skip
    skipped = next(" ".join(line) for line in lines if line[1] == "mine")
    assert (
        f"mine {images / 'mine.sif'}: a kernel spec of that name not made by this sync" in skipped
    )
    spec = installed(kernels(site) / "b")
    assert spec["metadata"]["kernel_provisioner"]["config"]["binds"] == ["/srv"]
    assert spec["argv"][len(LAUNCHER)] == "/usr/bin/python3"
    assert installed(kernels(site) / "mine")["metadata"]["kernel_provisioner"]["config"] == {
        "image": "/elsewhere/mine.sif"
    }
    assert (kernels(site) / "o").is_dir()
    assert not (kernels(site) / "a").exists()


def test_two_images_of_one_name_the_first_wins(site):
    images = site / "images"
    (images / "a.img").write_bytes(b"")
    status, lines = sync(str(images))
    assert status == 0
    assert [" ".join(line) for line in lines[:2]] == [
        f"added a {images / 'a.img'}",
        f"skipped a {images / 'a.sif'}: another image here has this name",
    ]
    assert installed(kernels(site) / "a")["display_name"] == "Python 3 (a.img)"


def test_dry_run_changes_nothing(site):
    images = site / "images"
    status, lines = sync(str(images), "--dry-run")
    assert status == 0
    assert lines[0] == ["would", "add", "a", str(images / "a.sif")]
    assert len(lines) == len(IMAGES)
    assert not kernels(site).exists()  # not even the lock file
    sync(str(images))
    (images / "b.simg").unlink()
    before = {p: p.stat().st_mtime_ns for p in kernels(site).rglob("*")}
    status, lines = sync(str(images), "--dry-run", "--env", "X=1")
    assert status == 0
    assert {line[1] for line in lines} == {"update", "remove"}
    assert {p: p.stat().st_mtime_ns for p in kernels(site).rglob("*")} == before


@pytest.mark.parametrize("where", ["--user", "--system", "--prefix", "--sys-prefix"])
def test_sync_destinations(site, where):
    images = site / "images"
    args = [where, str(site / "p")] if where == "--prefix" else [where]
    if where == "--sys-prefix":  # not into our .venv: a dry run, which names no folder
        status, lines = sync(str(images), *args, "--dry-run")
        assert status == 0
        assert len(lines) == len(IMAGES)
        return
    status, _ = sync(str(images), *args)
    assert status == 0
    root = {"--user": site / "user", "--system": site / "system/jupyter",
            "--prefix": site / "p/share/jupyter"}[where]  # fmt: skip
    assert (root / "kernels" / "a" / "kernel.json").exists()
    assert (root / "kernels" / ".container-kernel-sync.lock").exists()


def test_concurrent_syncs_wait_for_the_lock(site):
    """Cron syncs that start while another runs wait for it, one at a time: one adds the specs,
    the other finds nothing left to do."""
    images = site / "images"
    kernels(site).mkdir(parents=True)
    lock = open(kernels(site) / ".container-kernel-sync.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a running sync holds it
    waiting = [
        subprocess.Popen(
            [sys.executable, "-m", "container_kernel.faces.cli", "sync", str(images)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(2)
    assert [process.poll() for process in waiting] == [None, None]  # both still waiting
    assert not (kernels(site) / "a").exists()
    lock.close()
    verbs = []
    for process in waiting:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        verbs.append({line.split()[0] for line in out.splitlines()})
    assert sorted(verbs, key=sorted) == [{"added"}, {"unchanged"}]


def test_sync_check_probes_and_plain_syncs_keep_what_it_learned(site, image, runtime):
    """--check runs each image: a real one gets the frozen-modules flag and its debugger, a
    broken one fails (exit 1) and gets no spec; later syncs without --check keep the facts."""
    images = site / "images"
    for path in list(images.iterdir()):
        if path.is_file():
            path.unlink()
    (images / "stack").symlink_to(image)
    status, lines = sync(str(images), "--check", "--runtime", runtime)
    assert status == 1
    verbs = {line[1]: line[0] for line in lines}
    assert verbs == {"stack": "added", "bin-only": "failed", "sandbox": "failed"}
    spec = installed(kernels(site) / "stack")
    # the interpreter of the image's own Python kernel spec (Debian's python3-ipykernel ships one)
    assert spec["argv"][len(LAUNCHER) : len(LAUNCHER) + 2] == [
        "/usr/bin/python3",
        "-Xfrozen_modules=off",
    ]
    probe = spec["metadata"]["container_kernel"]["probe"]
    assert probe["python"].startswith("3.11")
    assert spec["metadata"]["debugger"] is (probe["debugpy"] is not None)
    status, lines = sync(str(images), "--runtime", runtime)
    assert status == 0
    assert {line[1]: line[0] for line in lines}["stack"] == "unchanged"
    check = container_kernel("check", "stack")  # the synced spec starts a real kernel
    assert check.returncode == 0, check.stdout + check.stderr
    assert "frozen modules" not in check.stderr


def test_an_image_folder_that_went_empty_removes_nothing(site, tmp_path):
    images = tmp_path / "mount"
    images.mkdir()
    (images / "a.sif").write_bytes(b"")
    sync(str(images))
    (images / "a.sif").unlink()  # as an NFS mount point looks when it is not mounted
    status, lines = sync(str(images))
    assert status == 1
    assert lines[0][:2] == ["kept", "1"]
    assert (kernels(site) / "a" / "kernel.json").exists()

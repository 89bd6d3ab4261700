"""Standby restarts (standby.py): a restart takes the pre-started container, which held no key
and ran nothing before; a changed spec discards it; nothing of it outlives its kernel.

Run as root and as an unprivileged user (scripts/test-as-user: lifecycle).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from kernels import run, running_kernel

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch.sessions import marked_processes
from container_kernel.placements.standby import IMPORTED

pytestmark = pytest.mark.lifecycle

WHO = "import os; print(os.environ['CONTAINER_KERNEL_SESSION'], os.getpid(), os.nice(0))"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def waiting_standby(km, timeout: float = 20):
    """The kernel's standby once its Python has imported ipykernel: its warm thread is gone and
    it has written what it imported (single-threaded alone may still be a shell that has not
    exec'd Python: Singularity 2.6 without an exec helper)."""
    container = km.provisioner._placement
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        standby = container.standby
        if standby is not None:
            mark = container.session.with_variant(standby.variant).mark
            pythons = [p for p in marked_processes(mark, inside_only=True) if alive(p)]
            warm = (standby.fifo.parent / IMPORTED).exists()
            if warm and pythons and all(len(os.listdir(f"/proc/{p}/task")) == 1 for p in pythons):
                return standby, mark, pythons
        time.sleep(0.1)
    raise AssertionError("no standby ready within 20 s")


def test_a_restart_hands_the_kernel_to_its_standby(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        run(kc, "x = 1; open('/tmp/kept', 'w').write('here')")
        _standby, mark, pythons = waiting_standby(km)
        key, connection = km.session.key.decode(), os.path.basename(km.connection_file)
        for pid in pythons:  # it was told nothing: no key, no connection file
            seen = (
                Path(f"/proc/{pid}/cmdline").read_bytes()
                + Path(f"/proc/{pid}/environ").read_bytes()
            )
            assert key.encode() not in seen
            assert connection.encode() not in seen
            assert not [f for f in os.listdir(f"/proc/{pid}/fd")
                        if connection in os.readlink(f"/proc/{pid}/fd/{f}")]  # fmt: skip
        # and the kernel cannot reach it: its FIFO is in a folder bound into the standby alone
        fifos = (
            "import os, stat\nfound = []\nfor top in ('/tmp', '/mnt'):\n"
            "    for folder, _, names in os.walk(top):\n"
            "        found += [n for n in names\n"
            "                  if stat.S_ISFIFO(os.lstat(os.path.join(folder, n)).st_mode)]\n"
            "print(found)"
        )
        assert run(kc, fifos).strip() == "[]"
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        session, pid, nice = run(kc, WHO).split()
        assert (session == mark and int(pid) in pythons) or session == mark
        assert nice == "0"  # the kernel runs at normal priority (only the imports did not)
        assert run(kc, "print('x' in dir())").strip() == "False"  # a fresh kernel
        assert run(kc, "print(open('/tmp/kept').read())").strip() == "here"  # its /tmp, as before
        assert run(kc, "print(6 * 7)").strip() == "42"
        # and the next standby comes for the next restart
        assert waiting_standby(km)[1] != mark


def test_an_interrupt_after_a_standby_restart_arrives_once(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        waiting_standby(km)
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute("import time\ntry:\n  time.sleep(20)\nexcept KeyboardInterrupt:\n"
                            "  time.sleep(1.5); print('once')")  # fmt: skip
        time.sleep(1.5)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=15)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok"  # a second SIGINT would have raised
        assert run(kc, "print(1 + 1)").strip() == "2"


def test_a_changed_kernel_spec_discards_the_standby(kernel_spec, jupyter_dirs, notebook_dir):
    name = kernel_spec()
    spec_file = jupyter_dirs["JUPYTER_PATH"] / "kernels" / name / "kernel.json"
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        _standby, mark, pythons = waiting_standby(km)
        spec = json.loads(spec_file.read_text())
        spec["display_name"] += " (edited)"
        spec_file.write_text(json.dumps(spec))
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        session = run(kc, WHO).split()[0]
        assert session != mark  # started cold
        assert [p for p in pythons if alive(p)] == []  # and the standby is gone


def test_without_standby_no_second_container(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(standby=False), str(notebook_dir)) as (km, kc):
        mark = km.provisioner._placement.session.name
        time.sleep(2)
        assert km.provisioner._placement.standby is None
        assert {p for p in marked_processes(mark, variants=True) if alive(p)} == {
            p for p in marked_processes(mark) if alive(p)
        }
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert run(kc, WHO).split()[0] == mark


def test_shutdown_takes_the_standby_along(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, _kc):
        _, _, pythons = waiting_standby(km)
        mark = km.provisioner._placement.session.name
    deadline = time.monotonic() + 10
    while [p for p in marked_processes(mark, variants=True) if alive(p)] and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert [p for p in marked_processes(mark, variants=True) if alive(p)] == []
    assert [p for p in pythons if alive(p)] == []


# A standby must never change what a restart does, only how fast: each of these changes between
# the start and the restart reaches the restarted kernel (or fails it) as a cold restart would.


def test_a_replaced_notebook_folder_is_the_one_a_restart_sees(kernel_spec, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.txt").write_text("old")
    with running_kernel(kernel_spec(), str(folder)) as (km, kc):
        waiting_standby(km)
        folder.rename(tmp_path / "project.old")  # as `mv project project.old; mkdir project`
        folder.mkdir()
        (folder / "data.txt").write_text("new")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert run(kc, "print(open('data.txt').read())").strip() == "new"


def test_a_repointed_symlink_on_the_notebook_path_is_followed(kernel_spec, tmp_path):
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "data.txt").write_text(version)
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "v1")
    with running_kernel(kernel_spec(), str(link)) as (km, kc):
        waiting_standby(km)
        link.unlink()
        link.symlink_to(tmp_path / "v2")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert run(kc, "print(open('data.txt').read())").strip() == "v2"


# (jupyter_client's failed restart leaves a ZMQ context to the garbage collector: collected here)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_deleted_bind_source_fails_the_restart_as_a_cold_one_would(
    kernel_spec, notebook_dir, tmp_path
):
    source = tmp_path / "data"
    source.mkdir()
    with running_kernel(kernel_spec(binds=[f"{source}:/srv"]), str(notebook_dir)) as (km, _):
        waiting_standby(km)
        shutil.rmtree(source)
        with pytest.raises(ContainerKernelError, match="Bind source does not exist"):
            km.restart_kernel(now=False)
    gc.collect()


def test_an_image_updated_in_place_is_the_one_a_restart_runs(
    kernel_spec, notebook_dir, image, tmp_path
):
    """A sandbox whose file changes inside (the folder's own inode, size and mtime unchanged):
    a standby that imported the old file is discarded (Apptainer's overlay would even show it
    the old file: only a new container sees the new one)."""
    copy = tmp_path / "image"
    if os.getuid() == 0:
        subprocess.run(["cp", "-al", str(image), str(copy)], check=True)  # (hard links: instant)
    else:  # (no hard links to root's files: a copy, without the few it cannot read)
        subprocess.run(["cp", "-a", str(image), str(copy)], check=False, capture_output=True)
    module = copy / "usr/lib/python3/dist-packages/ipykernel/__init__.py"
    assert module.is_file()
    before = os.stat(copy)
    with running_kernel(kernel_spec(image=str(copy)), str(notebook_dir)) as (km, kc):
        waiting_standby(km)
        replacement = module.with_name("__init__.py.new")  # (never write through a hard link)
        replacement.write_text(module.read_text() + "\nUPDATED = 'yes'\n")
        replacement.replace(module)
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        seen = run(kc, "import ipykernel; print(getattr(ipykernel, 'UPDATED', 'no'))").strip()
    assert seen == "yes"


def test_restarts_leave_no_standby_folders_behind(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(), str(notebook_dir)) as (km, kc):
        session = km.provisioner._placement.session.folder
        for _ in range(3):
            waiting_standby(km)
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            assert run(kc, "print(1)").strip() == "1"
        waiting_standby(km)
        assert len(list(session.glob("standby-*"))) == 1  # the next restart's, no more

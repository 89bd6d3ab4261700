"""What real clients do that a KernelManager in a test does not: relative connection files, a
notebook folder deleted under a running kernel, records damaged on disk, restarts right after a
start. On every runtime under test (the real ones in CI)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import pytest
from jupyter_client import AsyncKernelManager, KernelManager
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.multikernelmanager import MultiKernelManager
from kernels import run, running_kernel

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch.sessions import sessions_root

pytestmark = pytest.mark.lifecycle


def sessions_left() -> list[str]:
    return sorted(path.name for path in sessions_root().iterdir())


def answer(km) -> str:
    """What the running kernel of `km` answers to 6 * 7."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        return run(kc, "print(6 * 7)").strip()
    finally:
        kc.stop_channels()


def test_a_relative_connection_file_works(kernel_spec, notebook_dir, tmp_path, monkeypatch):
    """MultiKernelManager without connection_dir (its default) names `kernel-<id>.json`
    relative to the current folder."""
    monkeypatch.chdir(tmp_path)
    mkm = MultiKernelManager()
    kernel_id = mkm.start_kernel(kernel_name=kernel_spec(), cwd=str(notebook_dir))
    km = mkm.get_kernel(kernel_id)
    assert not os.path.isabs(km.connection_file)
    try:
        assert answer(km) == "42"
    finally:
        mkm.shutdown_all()
    assert sessions_left() == []


def test_a_connection_file_in_a_folder_with_spaces(kernel_spec, notebook_dir, tmp_path):
    folder = tmp_path / "my runtime dir"
    folder.mkdir(mode=0o700)
    km = KernelManager(kernel_name=kernel_spec(), connection_file=str(folder / "kernel 1.json"))
    km.start_kernel(cwd=str(notebook_dir))
    try:
        assert answer(km) == "42"
    finally:
        km.shutdown_kernel(now=True)


async def test_a_restart_after_the_notebook_folder_went_fails_in_one_line(kernel_spec, tmp_path):
    notebook = tmp_path / "project"
    notebook.mkdir()
    km = AsyncKernelManager(kernel_name=kernel_spec())
    await km.start_kernel(cwd=str(notebook))
    try:
        shutil.rmtree(notebook)
        with pytest.raises(ContainerKernelError, match=r"notebook's folder .* is gone"):
            await km.restart_kernel(now=True)
    finally:
        await km.shutdown_kernel(now=True)
    assert sessions_left() == []


async def test_a_server_restart_after_the_notebook_folder_went_is_a_dead_kernel(
    kernel_spec, tmp_path
):
    """Jupyter Server's manager (a restarter): no exception out of the restart, the kernel is
    dead with the reason in its log, and its session ends with it."""
    notebook = tmp_path / "project"
    notebook.mkdir()
    km = AsyncIOLoopKernelManager(kernel_name=kernel_spec())
    await km.start_kernel(cwd=str(notebook))
    try:
        shutil.rmtree(notebook)
        await km.restart_kernel(now=True)
        deadline = time.monotonic() + 10
        while await km.provisioner.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await km.provisioner.poll() == 1
        assert "is gone" in "".join(km.provisioner._stderr_tail)
    finally:
        await km.shutdown_kernel(now=True)
    assert sessions_left() == []


@pytest.mark.parametrize("damage", ["{}", "null", "[1]", '{"probe": 1}'])
def test_a_damaged_image_check_record_is_checked_again(kernel_spec, notebook_dir, tmp_path, damage):
    cache = tmp_path / "cache"
    name = kernel_spec(image_cache=str(cache))
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        run(kc, "print(1)")
    records = list((cache / "checks").iterdir())
    assert records
    for record in records:
        record.write_text(damage)
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        assert run(kc, "print(6 * 7)").strip() == "42"
    assert all(json.loads(record.read_text()) != json.loads(damage) for record in records)


def test_shutting_down_right_after_the_start_does_not_wait_for_the_standby(
    kernel_spec, notebook_dir
):
    """The standby starts 0.5 s after the kernel and imports for about a second: a shutdown
    then must not wait for it (it used to wait out a 1 s grace)."""
    times = {}
    for standby in (True, False):
        km = KernelManager(kernel_name=kernel_spec(f"ck-{standby}", standby=standby))
        km.start_kernel(cwd=str(notebook_dir))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        kc.stop_channels()
        time.sleep(0.6)  # the standby is starting now
        started = time.monotonic()
        km.shutdown_kernel(now=False)
        times[standby] = time.monotonic() - started
    assert times[True] < times[False] + 0.5, times
    assert sessions_left() == []


def test_every_folder_made_on_the_way_to_the_sessions_is_private(
    kernel_spec, notebook_dir, tmp_path, monkeypatch
):
    """The first kernel in a fresh account makes Jupyter's runtime folder: 0700, as Jupyter
    makes it (a server started later writes its token there)."""
    fresh = tmp_path / "fresh"
    runtime = fresh / "share" / "jupyter" / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    umask = os.umask(0o022)  # (the usual one: parents made by mkdir(parents=True) get 0755)
    km = KernelManager(kernel_name=kernel_spec(), connection_file=str(tmp_path / "k.json"))
    try:
        km.start_kernel(cwd=str(notebook_dir))  # (so only our code makes the runtime folder)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        kc.stop_channels()
    finally:
        os.umask(umask)
        km.shutdown_kernel(now=True)
    for folder in (runtime, runtime.parent, runtime.parent.parent, fresh):
        assert folder.stat().st_mode & 0o777 == 0o700, folder

"""Sessions: what a dead owner left is ended on its host only."""

from __future__ import annotations

import os
import socket
import subprocess

from container_kernel.launch.homes import persistent_home_path
from container_kernel.launch.sessions import Session, marked_processes, sweep


def test_sweep_ends_dead_owners_sessions_of_this_host_only(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_here = Session(tmp_path / f"{gone.pid}-1-aaaaaaaaaaaa@{socket.gethostname()}")
    dead_elsewhere = Session(tmp_path / f"{gone.pid}-1-bbbbbbbbbbbb@another-node")
    for session in (dead_here, dead_elsewhere):
        session.tmp.mkdir(parents=True)
    live = Session.create(tmp_path)
    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, **dead_here.environment})
    try:
        assert marked_processes(dead_here.name) == [orphan.pid]
        sweep(tmp_path)
        assert orphan.wait(timeout=5) == -9
        remaining = sorted(p.name for p in tmp_path.iterdir())
        assert remaining == sorted([dead_elsewhere.name, live.name])  # pids elsewhere mean nothing
    finally:
        orphan.kill()
        orphan.wait()


def test_spec_names_that_differ_only_in_odd_characters_get_homes_of_their_own(tmp_path):
    names = ["adv home", "adv_home", "adv+home", "adv-home"]
    paths = {persistent_home_path(str(tmp_path), name) for name in names}
    assert len(paths) == len(names)
    assert persistent_home_path(str(tmp_path), "adv_home") == tmp_path / "adv_home"  # as before

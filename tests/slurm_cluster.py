"""The tests' real Slurm cluster: `scripts/slurm-cluster up` starts it once per session (slurmctld
here, node1's slurmd in the network namespace ck-node1, at 10.231.0.2), and these helpers look at
and clean its queue. The helpers are plain functions; the fixtures at the end are for test
modules to import (each is named without its `_fixture`, the name a test asks for):

    from slurm_cluster import slurm_fixture  # noqa: F401

`slurm` (per test) gives the `Cluster` and, afterwards, cancels the jobs that appeared during the
test and waits until they are gone, so the next test finds node1's 2 CPUs free. A cluster that
cannot come up fails the test with the script's message; it is never skipped. `slurm_cluster`
(per session) is the `Cluster` alone. Test sessions share node1's 2 CPUs and `slurm` cancels any
new job of the user (root: of anyone): run one session with Slurm tests at a time.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm-cluster"
NODE = "node1"
NAMESPACE = "ck-node1"
UP_TIMEOUT = 900  # seconds; a first run may install Debian's packages


class ClusterError(RuntimeError):
    """The cluster could not be brought up, or did not do what was asked in time."""


@dataclass(frozen=True)
class Cluster:
    node: str  # the compute node's name, as `squeue -o %N` shows it (it resolves on the host)
    address: str  # its NodeAddr: the only address a job's listener is reachable at
    namespace: str  # the network namespace its slurmd and every job run in


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # PENDING, RUNNING, COMPLETING...
    reason: str  # why it waits (Resources, Priority...), else "None"
    user: str
    nodes: str
    name: str


class _Session:
    """What `ensure_cluster` learnt, once per process."""

    cluster: Cluster | None = None
    failure: str | None = None  # "" once `up` succeeded


def ensure_cluster() -> Cluster:
    """Run `scripts/slurm-cluster up` (once per process; a failure is remembered too) and say
    where the node is. Raises ClusterError with the script's own message when it cannot."""
    if _Session.cluster is None:
        if _Session.failure is None:
            _Session.failure = _up()
        if _Session.failure:
            raise ClusterError(_Session.failure)
        _Session.cluster = Cluster(node=NODE, address=node_address(), namespace=NAMESPACE)
    return _Session.cluster


def _up() -> str:
    """`scripts/slurm-cluster up`: what went wrong, or ""."""
    try:
        out = subprocess.run(
            [SCRIPT, "up"], capture_output=True, text=True, timeout=UP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return f"{SCRIPT} up took more than {UP_TIMEOUT} s"
    if out.returncode != 0:
        return f"{SCRIPT} up failed (exit {out.returncode}):\n{out.stderr.strip()}"
    return ""


def node_address(node: str = NODE) -> str:
    """The node's NodeAddr, as slurmctld knows it."""
    for field in _run(["scontrol", "-o", "show", "node", node]).split():
        if field.startswith("NodeAddr="):
            return field.removeprefix("NodeAddr=")
    raise ClusterError(f"scontrol shows no NodeAddr for {node}")


def jobs() -> list[Job]:
    """The jobs squeue lists (pending, running, completing...; not the finished ones), of every
    user."""
    out = _run(["squeue", "--noheader", "--format=%i\t%T\t%r\t%u\t%N\t%j"])
    return [Job(*line.split("\t", 5)) for line in out.splitlines() if line]


def job(job_id: str) -> Job | None:
    """One job as squeue lists it, or None once it is gone from the queue."""
    return next((j for j in jobs() if j.id == job_id), None)


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` every 50 ms until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise ClusterError(f"not within {timeout} s: {what}; the queue: {jobs()}")
        time.sleep(0.05)
    return result


def wait_no_jobs(timeout: float = 10, ids: Iterable[str] | None = None) -> None:
    """Wait until squeue lists no job (or none of `ids`): cancelled jobs leave after KillWait."""
    wanted = None if ids is None else set(ids)

    def gone() -> bool:
        return not [j for j in jobs() if wanted is None or j.id in wanted]

    wait_for(gone, timeout, "no job left" if wanted is None else f"jobs {sorted(wanted)} gone")


def cancel(ids: Iterable[str], timeout: float = 10) -> None:
    """scancel these jobs and wait until squeue no longer lists them."""
    ids = list(ids)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False)
        wait_no_jobs(timeout, ids)


def cancel_all(timeout: float = 10) -> None:
    """Cancel every job (root) or every job of ours (anyone else), and wait until they are gone."""
    cancel([j.id for j in jobs() if _cancellable(j)], timeout)


def _cancellable(job: Job) -> bool:
    return os.geteuid() == 0 or job.user == getpass.getuser()


def sbatch(*args: str) -> str:
    """Submit a batch job (output to /dev/null unless `args` say otherwise); return its id."""
    return _run(["sbatch", "--parsable", "--output=/dev/null", *args]).strip().split(";")[0]


def srun(*args: str, timeout: float = 60, **options) -> subprocess.CompletedProcess[str]:
    """Run `srun ARGS` to its end; stdout and stderr are captured as text."""
    return subprocess.run(
        ["srun", *args], capture_output=True, text=True, timeout=timeout, check=False, **options
    )


def _run(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return out.stdout


def _ensure() -> Cluster:
    try:
        return ensure_cluster()
    except ClusterError as error:
        message = str(error)
    pytest.fail(f"the test Slurm cluster is not usable: {message}", pytrace=False)


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> Cluster:
    """The cluster, up (once per session); nothing is cleaned after the tests."""
    return _ensure()


@pytest.fixture(name="slurm")
def slurm_fixture() -> Iterator[Cluster]:
    """The cluster, up; the jobs that appear during the test are cancelled after it."""
    cluster = _ensure()
    before = {j.id for j in jobs()}
    yield cluster
    cancel(j.id for j in jobs() if j.id not in before and _cancellable(j))

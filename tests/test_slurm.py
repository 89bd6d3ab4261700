"""Container kernels as Slurm jobs on a real Slurm (scripts/slurm-cluster), whose compute node
lives in its own network namespace: a kernel that listened on loopback only, or a server that
connected to itself, would fail these tests."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from IPython.testing import globalipapp
from jupyter_client import KernelManager
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from kernels import run, running_kernel
from slurm_cluster import slurm_fixture  # noqa: F401

from container_kernel import load_ipython_extension
from container_kernel.ground.errors import ContainerKernelError

pytestmark = pytest.mark.slurm


@pytest.fixture
def cluster(slurm, runtime, monkeypatch) -> str:
    """The compute node's address; USER set, as ch-run needs it in the job."""
    monkeypatch.setenv("USER", pwd.getpwuid(os.getuid()).pw_name)
    return slurm.address


def our_jobs() -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-u", str(os.getuid()), "-o", "%j %T"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if line.startswith("container-kernel-")]


def wait_no_jobs(timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := our_jobs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


@pytest.mark.parametrize("runtime", ["charliecloud", "apptainer"], indirect=True)
def test_a_kernel_on_the_compute_node(cluster, kernel_spec, notebook_dir, runtime):
    name = kernel_spec("ck-slurm", placement="slurm", env={"WHERE": "node"}, pass_env=["SLURM_*"])
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        assert km.ip == cluster  # the node's address, not ours
        out = run(kc, "import os, sys, json; print(json.dumps([sys.executable, "
                  "os.environ['WHERE'], os.environ.get('SLURM_JOB_ID'), "
                  "os.readlink('/proc/self/ns/net')]))")  # fmt: skip
        executable, where, job, netns = json.loads(out)
        assert (executable, where) == ("/usr/bin/python3", "node")
        assert job
        assert netns != os.readlink("/proc/self/ns/net")  # in the node's namespace
        # the key is nowhere Slurm or ps shows: job records, the queue, any process's argv
        key = km.session.key
        shown = [
            subprocess.run(cmd, capture_output=True, check=False).stdout
            for cmd in (["scontrol", "show", "job", "-dd", job], ["squeue", "-o", "%all"],
                        ["scontrol", "show", "step", f"{job}.0"], ["ps", "-eww", "-o", "args"])
        ]  # fmt: skip
        assert shown[0]
        assert not [out for out in shown if key in out]
        # an interrupt reaches Python exactly once (a real-time signal queues: counted exactly)
        run(kc, "import signal; hits = []")
        run(kc, "signal.signal(signal.SIGRTMIN + 1, lambda *_: hits.append(1))")
        km.signal_kernel(signal.SIGRTMIN + 1)
        time.sleep(1)
        assert run(kc, "print(len(hits))").strip() == "1"
        kc.execute("import time; time.sleep(60)")
        time.sleep(1)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        interrupt_latency = time.monotonic() - started
        km.restart_kernel(now=False)  # a new job
        kc.wait_for_ready(timeout=60)
        assert run(kc, "print(6 * 7)").strip() == "42"
        assert len(our_jobs()) == 1
    assert wait_no_jobs() == []
    print(f"interrupt latency through Slurm: {interrupt_latency:.3f} s")


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
async def test_a_kernel_killed_in_its_job_is_seen_dead_and_restarted(
    cluster, kernel_spec, notebook_dir
):
    km = AsyncIOLoopKernelManager(kernel_name=kernel_spec("ck-slurm", placement="slurm"))
    await km.start_kernel(cwd=str(notebook_dir))
    restarted = asyncio.Event()
    km.add_restart_callback(restarted.set, "restart")
    try:
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        reply = await kc.execute("import os; print(os.getpid())", reply=True, timeout=30)
        assert reply["content"]["status"] == "ok"
        kc.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        await asyncio.wait_for(restarted.wait(), timeout=60)
        await kc.wait_for_ready(timeout=60)
        kc.stop_channels()
    finally:
        await km.shutdown_kernel(now=True)
    assert wait_no_jobs() == []


SERVER = textwrap.dedent(
    """
    import sys, time
    from jupyter_client import KernelManager
    km = KernelManager(kernel_name=sys.argv[1])
    km.start_kernel(cwd=sys.argv[2])
    print("started", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_a_sigkilled_server_leaves_no_job(cluster, kernel_spec, notebook_dir):
    name = kernel_spec("ck-slurm", placement="slurm")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, name, str(notebook_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline() == "started\n"
        assert our_jobs()
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        assert wait_no_jobs(timeout=60) == []
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_a_job_kept_waiting_fails_naming_the_reason_and_is_cancelled(
    cluster, kernel_spec, notebook_dir
):
    blocker = subprocess.Popen(
        ["srun", "--job-name", "blocker", "--exclusive", "-N1", "sleep", "120"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while "RUNNING" not in _state_of("blocker") and time.monotonic() < deadline:
            time.sleep(0.3)
        name = kernel_spec("ck-slurm", placement="slurm", slurm_start_timeout=5.0)
        km = KernelManager(kernel_name=name)
        started = time.monotonic()
        with pytest.raises(ContainerKernelError, match=r"^Slurm kept the job waiting \(Resources"):
            km.start_kernel(cwd=str(notebook_dir))
        assert time.monotonic() - started < 20
        assert wait_no_jobs(timeout=10) == []
    finally:
        blocker.kill()
        blocker.wait()


def _state_of(job_name: str) -> str:
    out = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%T"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    return out.stdout


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_options_slurm_refuses_fail_at_once_with_its_message(cluster, kernel_spec, notebook_dir):
    name = kernel_spec("ck-slurm", placement="slurm", slurm_args=["--partition=nosuch"])
    km = KernelManager(kernel_name=name)
    started = time.monotonic()
    with pytest.raises(ContainerKernelError, match=r"(?i)invalid partition"):
        km.start_kernel(cwd=str(notebook_dir))
    assert time.monotonic() - started < 10
    assert our_jobs() == []


@pytest.mark.parametrize("runtime", ["charliecloud", "apptainer"], indirect=True)
def test_a_cell_as_a_job_on_the_compute_node(cluster, image, runtime, notebook_dir, monkeypatch):
    monkeypatch.chdir(notebook_dir)
    ip = globalipapp.get_ipython()
    before = list(ip.configurables)
    load_ipython_extension(ip)
    (magics,) = [c for c in ip.configurables if c not in before]
    line = f"--placement slurm --runtime {runtime} --pass-env 'SLURM_*' {image}"
    try:
        ip.user_ns["table"] = {"rows": 3}
        ip.run_cell(
            f"%%container -i table --out seen {line}\n"
            "import os, json\n"
            "print(json.dumps([table, os.environ.get('SLURM_JOB_ID'), "
            "os.readlink('/proc/self/ns/net'), os.getcwd()]))"
        )
        value, job, netns, cwd = json.loads(ip.user_ns["seen"])
        assert value == {"rows": 3}
        assert job
        assert netns != os.readlink("/proc/self/ns/net")  # on the node
        assert cwd == str(notebook_dir)
        # an interrupt stops the cell on the node, and its job (once it runs: the last job gone)
        assert wait_no_jobs(timeout=30) == []
        timer = threading.Timer(5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        result = ip.run_cell(f"%%container {line}\nimport time\ntime.sleep(60)")
        assert isinstance(result.error_in_exec, KeyboardInterrupt)
        assert "interrupted" in str(result.error_in_exec)
        assert time.monotonic() - started < 15
        assert wait_no_jobs(timeout=15) == []
    finally:
        ip.configurables.remove(magics)


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_a_registry_image_is_pulled_where_the_server_runs(  # noqa: PLR0917
    cluster, kernel_spec, notebook_dir, registry, image, tmp_path
):
    # the node (a network namespace of its own) cannot reach the registry on our 127.0.0.1:
    # the server pulls, into an image cache the node shares, and the node runs that copy
    pushed = registry.push(image, "ck-images/ipykernel:1")
    cache = tmp_path / "image-cache"
    name = kernel_spec(
        "ck-slurm-registry", placement="slurm", image=pushed, image_cache=str(cache),
        pass_env=["SLURM_*"],
    )  # fmt: skip
    mark = registry.mark()
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        assert km.ip == cluster
        assert run(kc, "import os; print(os.environ.get('SLURM_JOB_ID') is not None)") == "True\n"
    assert registry.requests_since(mark, name="ck-images/ipykernel")
    assert list(cache.glob("refs/*/*.json"))
    assert wait_no_jobs() == []

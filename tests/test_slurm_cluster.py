"""The test Slurm cluster itself (scripts/slurm-cluster): what later Slurm tests rely on. A job runs
on node1, in a network namespace of its own; what it listens on is reachable at the node's
address only; a job that does not fit waits with reason Resources; scancel leaves nothing."""

from __future__ import annotations

import getpass
import os
import pwd
import select
import signal
import socket
import subprocess
import time

import pytest
from slurm_cluster import (
    SCRIPT,
    cancel,
    job,
    jobs,
    sbatch,
    slurm_fixture,  # noqa: F401
    srun,
    wait_for,
    wait_no_jobs,
)

pytestmark = pytest.mark.slurm


def test_up_again_is_quick_and_status_says_up(slurm):
    started = time.monotonic()
    subprocess.run([SCRIPT, "up"], check=True)
    assert time.monotonic() - started < 1
    status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stdout
    assert f"{slurm.node} at {slurm.address}" in status.stdout


def test_a_job_runs_on_node1_in_its_own_network_namespace(slurm):
    out = srun("-N1", "-n1", "sh", "-c", "hostname; readlink /proc/self/ns/net; ip -4 -o addr")
    assert out.returncode == 0, out.stderr
    hostname, netns, *addresses = out.stdout.splitlines()
    assert hostname == slurm.node
    assert netns != os.readlink("/proc/self/ns/net")
    assert [a.split()[3] for a in addresses] == ["127.0.0.1/8", f"{slurm.address}/24"]
    host = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True)
    assert f"{slurm.address}/" not in host.stdout


SERVER = """
import socket
server = socket.socket()
server.bind(("0.0.0.0", 0))
server.listen()
print(server.getsockname()[1], flush=True)
for _ in range(2):
    connection, _ = server.accept()
    connection.sendall(socket.gethostname().encode())
    connection.close()
"""


def test_a_jobs_listener_is_reachable_at_the_node_address_only(slurm):
    with subprocess.Popen(
        ["srun", "-N1", "-n1", "python3", "-c", SERVER], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert select.select([server.stdout], [], [], 30)[0], "the job printed no port"
            port = int(server.stdout.readline())
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
            for host in (slurm.address, slurm.node):  # node1 resolves on the host
                with socket.create_connection((host, port), timeout=5) as connection:
                    assert connection.recv(100) == slurm.node.encode()
            assert server.wait(timeout=10) == 0
        finally:
            server.kill()


def test_a_job_that_does_not_fit_waits_for_resources(slurm):
    whole_node = sbatch("--cpus-per-task=2", "--wrap=sleep 60")
    waiting = sbatch("--cpus-per-task=1", "--wrap=sleep 60")

    def scheduled():  # `squeue -h -o "%T %r"`: "RUNNING None", "PENDING Resources"
        return [(j.state, j.reason) for j in map(job, (whole_node, waiting))] == [
            ("RUNNING", "None"),
            ("PENDING", "Resources"),
        ]

    wait_for(scheduled, 10, "the first job running, the second waiting for Resources")
    cancel([whole_node, waiting])
    assert not [j for j in jobs() if j.id in (whole_node, waiting)]


def test_scancel_leaves_no_job_and_no_process(slurm, tmp_path):
    pid_file = tmp_path / "pid"
    job_id = sbatch(f"--wrap=echo $$ > {pid_file}; exec sleep 300")
    pid = wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "job's pid")
    assert job(job_id).state == "RUNNING"
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    subprocess.run(["scancel", job_id], check=True)
    wait_no_jobs(10, [job_id])
    assert not os.path.exists(f"/proc/{pid}")


def test_anyone_submits_jobs(slurm):
    """No accounting, no associations: root and any user run jobs as themselves."""
    user = getpass.getuser()
    argv = ["srun", "-N1", "-n1", "--chdir=/tmp", "id", "-un"]
    if os.geteuid() == 0:  # a user with nothing set up at all
        user = "nobody"
        argv = ["runuser", "-u", user, "--", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, user), out.stderr


def test_ch_run_runs_the_test_image_in_a_job(slurm, image):
    user = pwd.getpwuid(os.getuid()).pw_name  # ch-run wants $USER, which may be unset
    code = "import socket, sys; print(socket.gethostname(), sys.prefix)"
    out = srun(
        "-N1", "-n1", "ch-run", str(image), "--", "python3", "-c", code,
        env={**os.environ, "USER": user},
    )  # fmt: skip
    assert (out.returncode, out.stdout.split()) == (0, [slurm.node, "/usr"]), out.stderr


def test_fake_gpus_set_cuda_visible_devices(slurm):
    out = srun("-p", "gpu", "--gres=gpu:2", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert (out.returncode, out.stdout.strip()) == (0, "0,1"), out.stderr


SIGNALS = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit("SIGINT"))
print("ready", flush=True)
time.sleep(2.5)
print("no SIGINT")
"""


@pytest.mark.parametrize(
    ("flags", "ending"),
    [
        ([], "no SIGINT"),  # "srun: interrupt (one more within 1 sec to abort)"
        (["-X"], "SIGINT"),  # forwarded
    ],
    ids=["srun", "srun -X"],
)
def test_one_sigint_reaches_the_job_with_srun_x_only(slurm, flags, ending):
    with subprocess.Popen(
        ["srun", *flags, "-N1", "-n1", "python3", "-c", SIGNALS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as run:
        assert select.select([run.stdout], [], [], 30)[0], "the job did not start"
        assert run.stdout.readline() == "ready\n"
        run.send_signal(signal.SIGINT)
        output = run.communicate(timeout=10)[0]
    other = {"SIGINT": "no SIGINT", "no SIGINT": "SIGINT"}[ending]
    assert ending in output.splitlines(), output
    assert other not in output.splitlines(), output

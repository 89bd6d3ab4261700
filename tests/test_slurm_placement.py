"""The Slurm placement's command, pinned: srun's argv and environment carry no key, no token."""

from __future__ import annotations

import json
import sys

from container_kernel.placements import placement_for
from container_kernel.placements.slurm import NODE_AGENT, Slurm
from container_kernel.settings import ContainerSettings


def test_srun_argv_and_environment_hold_no_secret(tmp_path):
    image = tmp_path / "image"
    image.mkdir()
    connection = tmp_path / "kernel-1.json"
    connection.write_text(json.dumps({"key": "the-key", "transport": "tcp", "shell_port": 5}))
    settings = ContainerSettings(
        image=str(image), placement="slurm", slurm_args=["--partition=gpu", "--time=01:00:00"],
        pass_env=["OMP_*"], env={"A": "1"},
    )  # fmt: skip
    kernel = placement_for(settings, "my-spec")
    assert isinstance(kernel, Slurm)
    host = {"PATH": "/usr/bin", "HOME": "/home/me", "USER": "me", "JUPYTERHUB_API_TOKEN": "tok",
            "JUPYTER_TOKEN": "tok", "OMP_NUM_THREADS": "4", "SPEC_VAR": "from spec",
            "JPY_PARENT_PID": "1", "SLURM_JOB_ID": "7", "JUPYTER_CONFIG_DIR": "/etc/j"}  # fmt: skip
    launch = kernel.prepare(
        ["python3", "-m", "ipykernel_launcher", "-f", str(connection)],
        connection_file=str(connection),
        cwd=str(tmp_path),
        host_env=host,
        named_env=["SPEC_VAR"],
    )
    assert launch.argv == [
        "srun", "--job-name", kernel.job_name, "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1",
        "--partition=gpu", "--time=01:00:00", sys.executable, "-m", NODE_AGENT,
    ]  # fmt: skip
    assert kernel.job_name.startswith("container-kernel-")
    # what finds Python and the runtime; not the server's own job (SLURM_JOB_ID would make srun
    # a step of it), no token; the kernel's values go on stdin, pass_env is applied on the node
    assert launch.env == {
        "PATH": "/usr/bin", "HOME": "/home/me", "USER": "me", "JUPYTER_CONFIG_DIR": "/etc/j"
    }  # fmt: skip
    everything = json.dumps([launch.argv, launch.env])
    assert "the-key" not in everything
    assert "tok" not in everything
    request = kernel.request
    assert request["connection"]["key"] == "the-key"  # on srun's stdin only
    assert request["named_values"] == {"SPEC_VAR": "from spec"}
    assert request["settings"]["slurm_args"] == ["--partition=gpu", "--time=01:00:00"]
    assert "placement" not in request["settings"]

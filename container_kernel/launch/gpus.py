"""What hardware a container is given: which GPU vendor, which of its GPUs, how many threads.

A runtime's GPU flag (`--nv`, `--rocm`) shows the container every GPU of the machine; what says
which of them a job was allocated are variables that the scheduler (or the user) sets, and a
clean environment drops them (apptainer#2203). So whenever a GPU setting is on, and only then,
the allocating variables of that vendor, and Slurm's, are carried in from the host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from fnmatch import fnmatchcase

from .environment import is_secret

VENDORS = ("nvidia", "amd")

# Device files the drivers create: the machine has that vendor's GPUs (NVIDIA first).
DEVICES: dict[str, tuple[str, ...]] = {
    "nvidia": ("/dev/nvidiactl", "/dev/nvidia0"),
    "amd": ("/dev/kfd",),
}

# The variables by which each vendor's libraries learn which GPUs they may use.
ALLOCATION: dict[str, tuple[str, ...]] = {
    "nvidia": ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"),
    "amd": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"),
}
# Slurm's own record of a job's GPUs (SLURM_JOB_GPUS, SLURM_STEP_GPUS, SLURM_GPUS_ON_NODE...),
# for either vendor.
SLURM_GPU = "SLURM_*GPU*"

# What the numerical libraries read for their thread counts (the `threads` setting).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS")  # fmt: skip


def detect() -> str | None:
    """The GPU vendor of this machine, by its driver's device files; None without any."""
    for vendor in VENDORS:
        if any(os.path.exists(path) for path in DEVICES[vendor]):
            return vendor
    return None


def vendor(mode: str) -> str | None:
    """The vendor a `gpu` setting (its trait's value: one of GPU_MODES) means here: decided
    where the container runs (`auto` looks at this machine's devices: with Slurm, the node's);
    None for no GPU."""
    if mode == "auto":
        return detect()
    return None if mode == "none" else mode


def allocated(gpu: str | None, host_env: Mapping[str, str]) -> dict[str, str]:
    """The host's variables that say which GPUs of vendor `gpu` were allocated: its own and
    Slurm's (never a name that looks like a secret); nothing without a GPU."""
    if gpu is None:
        return {}
    return {
        name: value
        for name, value in host_env.items()
        if name in ALLOCATION[gpu] or (fnmatchcase(name, SLURM_GPU) and not is_secret(name))
    }


def thread_variables(threads: int | None) -> dict[str, str]:
    """The numerical libraries' thread counts for `threads` (None: leave them alone)."""
    return dict.fromkeys(THREAD_VARIABLES, str(threads)) if threads else {}

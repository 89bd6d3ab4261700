# /etc/jupyter/container_kernel_config.py: container-kernel settings for every user and every
# client: Jupyter Server, papermill, nbconvert, jupyter console and run, a script's KernelManager,
# the launcher of installed specs, %%container and the container-kernel command.
# A kernel spec's own config goes on top: lists add up, dicts merge (the spec's keys win), other
# values from the spec win, except the `locked` ones. tests/test_settings.py runs this file.
import os

c = get_config()  # noqa: F821

# Shared login nodes: one thread per numerical library unless a kernel spec says otherwise.
c.ContainerSettings.env = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
# The data lives on scratch. Bind it, never the whole home: the fake home keeps the real one
# (and ~/.local) out, and ~/.local/share/jupyter/runtime holds every kernel's key.
c.ContainerSettings.binds = [os.environ.get("SCRATCH", "/scratch")]
# Let the scheduler's variables in (a glob never admits tokens, keys or proxies).
c.ContainerSettings.pass_env = ["SLURM_*"]
# Kernels on compute nodes: their channels cross the cluster's network encrypted, or they do not
# start (images need ipykernel 7; `container-kernel install` says whether an image has it).
c.ContainerSettings.encryption = "required"
# What no kernel spec, cell or command line may change here.
c.ContainerSettings.locked = ["cleanenv", "share_tmp", "encryption"]

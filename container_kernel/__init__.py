"""Run Jupyter kernels inside Apptainer/Singularity and Charliecloud containers."""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext container_kernel`: IPython is imported here only, never by the provisioner."""
    from .magics import ContainerMagics

    ipython.register_magics(ContainerMagics)

"""Run Jupyter kernels inside Apptainer/Singularity and Charliecloud containers."""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext container_kernel`: IPython is imported here only, never by the provisioner."""
    from .faces.magics import ContainerMagics
    from .settings import site_config

    config = site_config()  # a site's c.ContainerSettings, under the user's IPython config
    config.merge(ipython.config)
    ipython.register_magics(ContainerMagics(shell=ipython, config=config))

"""Run Jupyter kernels inside Apptainer/Singularity and Charliecloud containers."""

__version__ = "0.1.0"

"""The example kernel specs load as jupyter_client loads them, and their config is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from container_kernel.faces.provisioner import ContainerProvisioner

SPECS = Path(__file__).resolve().parent.parent / "kernelspecs"


@pytest.mark.parametrize("folder", sorted(p.name for p in SPECS.iterdir() if p.is_dir()))
def test_example_spec_selects_the_provisioner(folder):
    spec = KernelSpecManager(kernel_dirs=[str(SPECS)]).get_kernel_spec(folder)
    factory = KernelProvisionerFactory.instance()
    assert factory.is_provisioner_available(spec)
    provisioner = factory.create_provisioner_instance("k", spec, parent=None)
    assert isinstance(provisioner, ContainerProvisioner)
    config = spec.metadata["kernel_provisioner"]["config"]
    assert {name: getattr(provisioner, name) for name in config} == config

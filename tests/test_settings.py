"""Site-wide defaults and their precedence: Jupyter config files under a kernel spec's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from kernels import run, running_kernel
from traitlets.config import Config

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.settings import ContainerSettings, site_config

SITE = """
c.ContainerSettings.binds = ["{scratch}"]
c.ContainerSettings.pass_env = ["SLURM_*"]
c.ContainerSettings.env = {{"OMP_NUM_THREADS": "1", "WHO": "site"}}
c.ContainerSettings.runtime_args = []
c.ContainerProvisioner.startup_check_timeout = 20.0
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A Jupyter config folder (as /etc/jupyter would be) holding the site's settings."""
    folder = tmp_path / "etc-jupyter"
    folder.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(folder))

    def write(extra: str = "") -> Path:
        text = SITE.format(scratch=scratch) + extra
        (folder / "jupyter_server_config.py").write_text(text)
        return scratch

    return write


def test_lists_add_up_dicts_merge_and_the_spec_wins_scalars(site, tmp_path):
    scratch = site('c.ContainerSettings.home = "temporary"\n')
    settings = ContainerSettings(
        config=site_config(),
        binds=["/data"],
        env={"WHO": "spec"},
        pass_env=["SLURM_*", "OMP_*"],
        home="none",
    )
    assert settings.binds == [str(scratch), "/data"]
    assert settings.pass_env == ["SLURM_*", "OMP_*"]  # no duplicates
    assert settings.env == {"OMP_NUM_THREADS": "1", "WHO": "spec"}
    assert settings.home == "none"
    assert ContainerSettings(config=site_config()).home == "temporary"


def test_json_config_and_the_provisioner_section_count_too(site, monkeypatch, tmp_path):
    site()
    folder = tmp_path / "etc-jupyter"
    (folder / "jupyter_config.json").write_text(
        json.dumps({"ContainerProvisioner": {"share_tmp": True}})
    )
    settings = ContainerSettings(config=site_config())
    assert settings.share_tmp is True


def test_a_site_can_lock_settings(site):
    site('c.ContainerSettings.locked = ["cleanenv", "home_root", "binds"]\n')
    config = site_config()
    assert ContainerSettings(config=config, cleanenv=True).cleanenv  # the same value is fine
    for given, name in (({"cleanenv": False}, "cleanenv"), ({"home_root": "/x"}, "home_root"),
                        ({"binds": ["/data"]}, "binds")):  # fmt: skip
        with pytest.raises(ContainerKernelError, match=f"^The site fixes `{name}`"):
            ContainerSettings(config=config, **given)
    with pytest.raises(ContainerKernelError, match="`locked` is the site's"):
        ContainerSettings(config=config, locked=[])


def test_the_earlier_name_launcher_is_still_read(site):
    """Kernel specs, site files and `locked` lists written before `placement` had its name."""
    assert ContainerSettings(launcher="slurm").placement == "slurm"
    site('c.ContainerSettings.launcher = "slurm"\nc.ContainerSettings.locked = ["launcher"]\n')
    config = site_config()
    assert ContainerSettings(config=config).placement == "slurm"
    with pytest.raises(ContainerKernelError, match=r"^The site fixes `placement`"):
        ContainerSettings(config=config, launcher="local")


@pytest.mark.parametrize(
    ("key", "hint"),
    [("bind", "did you mean `binds`?"), ("mounts", "known: binds, cleanenv")],
)
def test_an_unknown_setting_is_refused_naming_the_closest(key, hint):
    with pytest.raises(ContainerKernelError, match=f"^Unknown container-kernel setting `{key}`"):
        ContainerSettings(**{key: "x"})
    with pytest.raises(ContainerKernelError, match=hint):
        ContainerSettings(**{key: "x"})


def test_a_kernel_spec_with_an_unknown_setting_fails_its_start(kernel_spec, tmp_path):
    km = KernelManager(kernel_name=kernel_spec(bind=["/data"]))
    with pytest.raises(ContainerKernelError, match="did you mean `binds`"):
        km.start_kernel(cwd=str(tmp_path))


def test_site_settings_reach_a_kernel_through_its_server_config(site, kernel_spec, tmp_path):
    scratch = site()
    (scratch / "shared.txt").write_text("on scratch")
    config = Config()
    config.merge(site_config())  # what Jupyter Server loads from the same files
    name = kernel_spec(env={"WHO": "spec"})
    with running_kernel(name, str(tmp_path), config=config) as (km, kc):
        out = run(
            kc,
            "import os, json; print(json.dumps([os.environ['OMP_NUM_THREADS'], "
            f"os.environ['WHO'], open({str(scratch / 'shared.txt')!r}).read()]))",
        )
        assert km.provisioner.startup_check_timeout == 20.0
    assert json.loads(out) == ["1", "spec", "on scratch"]


def test_the_documented_site_config_as_it_is(tmp_path, monkeypatch, kernel_spec):
    folder = tmp_path / "etc-jupyter"
    folder.mkdir()
    docs = Path(__file__).parent.parent / "docs" / "container_kernel_config.py"
    (folder / "container_kernel_config.py").write_text(docs.read_text())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "data.csv").write_text("1,2")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(folder))
    monkeypatch.setenv("SCRATCH", str(scratch))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_FAKE_TOKEN", "secret")
    with pytest.raises(ContainerKernelError, match="The site fixes `cleanenv`"):
        ContainerSettings(config=site_config(), cleanenv=False)
    with pytest.raises(ContainerKernelError, match="The site fixes `encryption`"):
        ContainerSettings(config=site_config(), encryption="off")
    name = kernel_spec(env={"OMP_NUM_THREADS": "8"})  # a spec for a compute node's cores
    with running_kernel(name, str(tmp_path), config=site_config()) as (_, kc):
        out = run(
            kc,
            "import os, json; print(json.dumps([os.environ['OMP_NUM_THREADS'], "
            "os.environ['MKL_NUM_THREADS'], os.environ['SLURM_JOB_ID'], "
            f"'SLURM_FAKE_TOKEN' in os.environ, open({str(scratch / 'data.csv')!r}).read()]))",
        )
    assert json.loads(out) == ["8", "1", "42", False, "1,2"]


def test_every_placement_value_has_its_class():
    from container_kernel import placements, settings

    assert set(placements.PLACEMENTS) == set(settings.PLACEMENTS)

"""`container-kernel check NAME|IMAGE`: one line per fact, `ok` or `FAIL` with the fix, and a real
kernel start, through the real command line on both runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import container_kernel, installed, jupyter_folders

FROZEN = "frozen modules"  # debugpy's warning at every start of a 3.11+ kernel without the flag


@pytest.fixture
def isolated(tmp_path, monkeypatch, runtime):
    return jupyter_folders(tmp_path, monkeypatch)


def lines(out) -> dict[str, str]:
    """`ok   what: detail` lines by `what`; every line must start with ok or FAIL."""
    found = {}
    for line in out.stdout.splitlines():
        status, _, rest = line.partition(" ")
        assert status in ("ok", "FAIL"), line
        what, _, detail = rest.strip().partition(": ")
        found[what] = f"{status} {detail}"
    return found


def test_check_spec_reports_every_fact_and_starts_a_kernel(isolated, image, runtime):
    assert container_kernel("install", str(image), "--name", "stack").returncode == 0
    out = container_kernel("check", "stack")
    assert out.returncode == 0, out.stdout + out.stderr
    facts = lines(out)
    assert list(facts) == [
        "spec", "runtime", "no-eval", "GPUs", "image", "python", "ipykernel", "debugger", "kernel",
    ]  # fmt: skip
    flavour = {"apptainer": "ok apptainer 1.4.5", "charliecloud": "ok charliecloud "}[runtime]
    assert facts["runtime"].startswith(flavour)
    if runtime == "apptainer":
        assert facts["no-eval"] == "ok yes, values go in literally (--no-eval)"
        assert facts["GPUs"].startswith("ok none (NVIDIA with --nv, AMD with --rocm")
    else:
        assert facts["GPUs"].startswith("ok none (NVIDIA: an image prepared once with")
    assert facts["image"] == f"ok {image} (sandbox folder, readable)"
    assert facts["python"] == "ok /usr/bin/python3 3.11.2 (CPython)"
    assert facts["ipykernel"].startswith("ok 6.")
    assert facts["kernel"].startswith("ok started, kernel_info reply in ")
    seconds = float(facts["kernel"].split(" in ")[1].split(" s ")[0])
    assert 0 < seconds < 60
    assert FROZEN not in out.stderr  # probed: the spec turns frozen modules off (Python 3.11)


def test_frozen_modules_warning_only_without_the_flag(isolated, image, runtime):
    """--no-check leaves the flag out (the Python is unknown): the warning is back, so the test
    above would see it if the flag did not work."""
    assert container_kernel("install", str(image), "--name", "raw", "--no-check").returncode == 0
    out = container_kernel("check", "raw")
    assert out.returncode == 0, out.stdout
    assert FROZEN in out.stderr


def test_a_spec_whose_argv_cannot_start_fails(isolated, image, runtime):
    assert container_kernel("install", str(image), "--name", "broken").returncode == 0
    spec_file = isolated / "user" / "kernels" / "broken" / "kernel.json"
    spec = installed(spec_file.parent)
    spec["argv"] = [arg.replace("ipykernel_launcher", "no_such_module") for arg in spec["argv"]]
    spec_file.write_text(json.dumps(spec))
    out = container_kernel("check", "broken")
    assert out.returncode == 1
    facts = lines(out)
    assert facts["python"].startswith("ok ")  # the interpreter runs: only a start shows it
    assert facts["kernel"].startswith("FAIL ")
    assert "No module named no_such_module" in facts["kernel"]
    assert facts["kernel"].endswith(" - fix the spec's argv or settings")


def test_check_image_starts_a_kernel_from_a_temporary_spec(isolated, image, runtime):
    out = container_kernel("check", str(image), "--runtime", runtime, "--python", "python3")
    assert out.returncode == 0, out.stdout + out.stderr
    facts = lines(out)
    assert "spec" not in facts
    assert facts["kernel"].startswith("ok started")
    assert FROZEN not in out.stderr
    assert not (isolated / "user" / "kernels").exists()  # nothing installed
    assert not (isolated / "user" / "container-kernel" / "homes").exists()  # nor a home kept


def test_check_image_with_settings_flags(isolated, image, runtime):
    out = container_kernel("check", str(image), "--gpu", "--bind", "/srv")
    facts = lines(out)
    if runtime == "charliecloud":  # ch-run has no GPU flag: the fix says what to do
        assert out.returncode == 1
        assert facts["GPUs"].startswith("FAIL ch-run has no GPU flag and ")
        assert f"`ch-fromhost --nvidia {image}`" in facts["GPUs"]
    else:  # the double warns that there is no GPU, as Apptainer does, and starts
        assert out.returncode == 0, out.stdout
        assert facts["GPUs"].startswith("ok nvidia (NVIDIA with --nv")
        assert facts["kernel"].startswith("ok started")


def test_missing_image_and_runtime_fail_with_the_fix(isolated, tmp_path, runtime):
    out = container_kernel("check", str(tmp_path / "gone.sif"), "--runtime-path", "/nonexistent")
    assert out.returncode == 1
    facts = lines(out)
    assert facts["runtime"] == "FAIL runtime_path '/nonexistent' is not an executable file."
    assert (
        facts["image"]
        == f"FAIL {tmp_path / 'gone.sif'} does not exist - build it there, or fix `image`"
    )
    assert "kernel" not in facts  # nothing to start


def test_image_without_python_fails_the_python_line(isolated, tmp_path, runtime):
    empty_image = tmp_path / "empty-image"
    (empty_image / "tmp").mkdir(parents=True)
    out = container_kernel("check", str(empty_image))
    assert out.returncode == 1
    facts = lines(out)
    assert facts["python"].startswith("FAIL python3 does not run in")
    assert facts["python"].endswith("- install Python 3 in the image, or name its interpreter")


def test_check_applies_the_site_settings(isolated, image, runtime):
    """Settings from the site's Jupyter config reach `check` as they reach a server's kernels."""
    assert container_kernel("install", str(image), "--name", "site").returncode == 0
    config = isolated / "config"
    config.mkdir()
    missing = isolated / "scratch"
    (config / "jupyter_config.json").write_text(
        json.dumps({"ContainerSettings": {"binds": [str(missing)]}})
    )
    out = container_kernel("check", "site")
    assert out.returncode == 1
    assert f"Bind source does not exist: {missing}" in lines(out)["python"]
    locked = {"ContainerSettings": {"locked": ["home"]}}
    (config / "jupyter_config.json").write_text(json.dumps(locked))
    spec = installed(isolated / "user" / "kernels" / "site")
    spec["metadata"]["kernel_provisioner"]["config"]["home"] = "none"
    Path(isolated / "user" / "kernels" / "site" / "kernel.json").write_text(json.dumps(spec))
    out = container_kernel("check", "site")
    assert out.returncode == 1
    assert lines(out)["settings"].startswith("FAIL The site fixes `home`")


def test_settings_flags_do_not_go_with_a_spec_name(isolated, image, runtime):
    assert container_kernel("install", str(image), "--name", "named", "--no-check").returncode == 0
    out = container_kernel("check", "named", "--bind", "/srv")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "container-kernel check: error: 'named' is a kernel spec: its settings are in its "
        "kernel.json."
    )

"""GPUs given exactly as allocated, and the `threads` hint.

No GPU here: the runtime's flags are checked in its argv (and, through the Apptainer double, by
the warning real Apptainer prints when it finds no driver), the variables that say which GPUs
were allocated are set on the host with fake values and read inside a real container. With
Slurm, the test cluster's node has 2 fake GPUs (device nodes, gres.conf): a job given
`--gres=gpu:1` gets Slurm's own CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from kernels import run, running_kernel
from slurm_cluster import slurm_fixture  # noqa: F401
from traitlets import TraitError
from traitlets.config import Config

from container_kernel.faces.cli import build_parser
from container_kernel.faces.cli_arguments import add_settings_arguments, settings_from_arguments
from container_kernel.faces.magics import ContainerMagics
from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch import gpus
from container_kernel.launch.plan import build_request
from container_kernel.launch.sessions import Session
from container_kernel.placements.slurm import srun_launch
from container_kernel.runtimes import apptainer, charliecloud
from container_kernel.runtimes.base import ExecRequest
from container_kernel.settings import ContainerSettings, site_config

# What a scheduler would set on the host (fake values: no GPU here).
NVIDIA = {"CUDA_VISIBLE_DEVICES": "1,3", "NVIDIA_VISIBLE_DEVICES": "1,3"}
AMD = {"ROCR_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "0", "GPU_DEVICE_ORDINAL": "0"}
SLURM = {"SLURM_JOB_GPUS": "1,3", "SLURM_STEP_GPUS": "1,3", "SLURM_GPUS_ON_NODE": "2"}
# Never carried by a GPU setting: not about GPUs, or a secret by its name.
OTHERS = {"SLURM_JOB_ID": "77", "SLURM_GPU_TOKEN": "s3cret"}
HOST = {**NVIDIA, **AMD, **SLURM, **OTHERS}
EXPECTED = {None: {}, "nvidia": {**NVIDIA, **SLURM}, "amd": {**AMD, **SLURM}}
THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# What Apptainer prints when --nv/--rocm find no driver files, and goes on (the double too):
# internal/pkg/runtime/launch/launcher_linux.go, addGPUBinds():
#     if len(files) == 0 { if bins != nil {
#         sylog.Warningf("Could not find any %s files on this host!", gpuPlatform) } }
# called with gpuPlatform "nv" (setNVLegacyConfig) or "rocm" (setRocmConfig); no error returned.
LIBS = "/.singularity.d/libs"  # where Apptainer binds the host's GPU libraries
# what --nv / --rocm bind there from a host without a GPU but with Mesa and libdrm (these VMs)
BOUND_LIBRARY = {"nvidia": "libGL.so.1", "amd": "libdrm_amdgpu.so.1", None: None}
NO_DRIVER = {"nvidia": "Could not find any nv files", "amd": "Could not find any rocm files"}


# -- the setting and its flags ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [(True, "nvidia"), (False, "none"), ("true", "nvidia"), ("False", "none"), ("none", "none"),
     ("NVIDIA", "nvidia"), ("amd", "amd"), ("auto", "auto")],
)  # fmt: skip
def test_gpu_takes_a_vendor_and_the_old_booleans(given, expected):
    assert ContainerSettings().gpu == "none"
    assert ContainerSettings(gpu=given).gpu == expected  # a kernel.json's config, a cell's


@pytest.mark.parametrize("given", ["cuda", 1, None, ""])
def test_gpu_refuses_anything_else(given):
    with pytest.raises(TraitError, match="none', 'nvidia', 'amd', 'auto'"):
        ContainerSettings(gpu=given)


def test_the_old_boolean_in_a_sites_config(tmp_path, monkeypatch):
    (tmp_path / "jupyter_server_config.py").write_text("c.ContainerSettings.gpu = True\n")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    assert ContainerSettings(config=site_config()).gpu == "nvidia"
    config = Config({"ContainerSettings": {"gpu": False}})
    assert ContainerSettings(config=config, gpu="amd").gpu == "amd"  # a spec's value wins


def test_threads_is_unset_or_at_least_one():
    assert ContainerSettings().threads is None
    assert ContainerSettings(threads=4).threads == 4
    with pytest.raises(TraitError, match="not be less than 1"):
        ContainerSettings(threads=0)


@pytest.mark.parametrize(
    ("words", "expected"),
    [(["--gpu"], {"gpu": "nvidia"}), (["--gpu", "AMD"], {"gpu": "amd"}),
     (["--gpu=auto"], {"gpu": "auto"}), (["--gpu", "none"], {"gpu": "none"}),
     (["--no-gpu"], {"gpu": "none"}), (["--threads", "8"], {"threads": 8}), ([], {})],
)  # fmt: skip
def test_gpu_and_threads_flags(words, expected):
    args = build_parser().parse_args(["install", "img.sif", *words])
    values = settings_from_arguments(args)
    assert {k: values[k] for k in ("gpu", "threads") if k in values} == expected


def test_a_bare_gpu_before_a_word_says_how_to_write_it(capsys):
    parser = argparse.ArgumentParser(prog="x")
    add_settings_arguments(parser.add_argument)
    parser.add_argument("image", nargs="?")
    with pytest.raises(SystemExit):
        parser.parse_args(["--gpu", "img.sif"])
    err = capsys.readouterr().err
    assert "argument --gpu: takes none, nvidia, amd, auto, not 'img.sif'" in err
    assert "write --gpu=nvidia" in err


def test_install_writes_gpu_and_threads_into_the_spec(tmp_path, monkeypatch):
    """Through the real command line: only non-default values go into kernel.json."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    run_cli = [sys.executable, "-m", "container_kernel.faces.cli", "install", "--no-check"]
    out = subprocess.run([*run_cli, "/images/a.sif", "--gpu=amd", "--threads", "4"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    spec = json.loads((tmp_path / "user" / "kernels" / "a" / "kernel.json").read_text())
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert (config["gpu"], config["threads"]) == ("amd", 4)
    out = subprocess.run([*run_cli, "/images/b.sif", "--gpu", "--no-gpu"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    spec = json.loads((tmp_path / "user" / "kernels" / "b" / "kernel.json").read_text())
    assert "gpu" not in spec["metadata"]["kernel_provisioner"]["config"]  # the default


# -- which vendor, which variables ----------------------------------------------------------------


@pytest.fixture
def devices(tmp_path, monkeypatch):
    """`devices("kfd", ...)`: this machine has those device files, and no others."""
    folder = tmp_path / "dev"
    folder.mkdir()
    return lambda *present: fake_devices(monkeypatch, folder, *present)


def fake_devices(monkeypatch, folder: Path, *present: str) -> None:
    """The device files `auto` looks at, moved to `folder`; the named ones exist."""
    devices = {"nvidia": (str(folder / "nvidiactl"), str(folder / "nvidia0")),
               "amd": (str(folder / "kfd"),)}  # fmt: skip
    for name in present:
        (folder / name).touch()
    monkeypatch.setattr(gpus, "DEVICES", devices)


@pytest.mark.parametrize(
    ("present", "expected"),
    [((), None), (("nvidia0",), "nvidia"), (("nvidiactl",), "nvidia"), (("kfd",), "amd"),
     (("kfd", "nvidiactl"), "nvidia")],
)  # fmt: skip
def test_auto_is_what_the_machine_has(tmp_path, monkeypatch, present, expected):
    fake_devices(monkeypatch, tmp_path, *present)
    assert gpus.vendor("auto") == expected
    assert (gpus.vendor("none"), gpus.vendor("nvidia"), gpus.vendor("amd")) == (
        None, "nvidia", "amd")  # fmt: skip


def test_each_vendor_gets_its_own_variables_and_slurms():
    for vendor, expected in EXPECTED.items():
        assert gpus.allocated(vendor, {**HOST, "PATH": "/bin"}) == expected
    assert "SLURM_GPU_TOKEN" not in gpus.allocated("nvidia", HOST)  # a secret's name


@pytest.fixture
def session(tmp_path) -> Session:
    (tmp_path / "sessions").mkdir()
    return Session.create(tmp_path / "sessions")


def request_for(tmp_path, session, host_env=HOST, **settings) -> ExecRequest:
    image = tmp_path / "image"
    image.mkdir(exist_ok=True)
    return build_request(
        ContainerSettings(image=str(image), **settings), ["python3"], cwd=str(tmp_path),
        home=None, host_env=host_env, session=session, image=str(image),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("gpu", "vendor"), [("none", None), (False, None), ("nvidia", "nvidia"), (True, "nvidia"),
                        ("amd", "amd")],
)  # fmt: skip
def test_the_variables_go_in_only_with_a_gpu(tmp_path, session, gpu, vendor):
    request = request_for(tmp_path, session, gpu=gpu)
    assert request.gpu == vendor
    assert {k: v for k, v in request.env.items() if k in HOST} == EXPECTED[vendor]


def test_auto_is_decided_where_the_request_is_built(tmp_path, session, monkeypatch):
    fake_devices(monkeypatch, tmp_path, "kfd")
    request = request_for(tmp_path, session, gpu="auto")
    assert request.gpu == "amd"
    assert {k: v for k, v in request.env.items() if k in HOST} == EXPECTED["amd"]
    fake_devices(monkeypatch, tmp_path / "image")  # nothing there
    assert request_for(tmp_path, session, gpu="auto").gpu is None


def test_the_users_own_values_win(tmp_path, session):
    request = request_for(tmp_path, session, gpu="nvidia", threads=4,
                          env={"CUDA_VISIBLE_DEVICES": "7", "OMP_NUM_THREADS": "2"})  # fmt: skip
    assert request.env["CUDA_VISIBLE_DEVICES"] == "7"
    assert request.env["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    assert [request.env[name] for name in THREADS] == ["2", "4", "4", "4"]
    passed = request_for(tmp_path, session, {"OMP_NUM_THREADS": "16"}, threads=4,
                         pass_env=["OMP_*"])  # fmt: skip
    assert passed.env["OMP_NUM_THREADS"] == "16"
    assert not any(name in request_for(tmp_path, session).env for name in THREADS)


# -- each runtime's flags -------------------------------------------------------------------------

FLAVOURS = {
    "apptainer 1.4.5": apptainer.Flavour("apptainer", (1, 4, 5)),
    "apptainer 1.0.0": apptainer.Flavour("apptainer", (1, 0, 0)),
    "singularity-ce 3.8.0": apptainer.Flavour("singularity-ce", (3, 8, 0)),
    "singularity 3.5.0": apptainer.Flavour("singularity", (3, 5, 0)),
    "singularity 3.4.2": apptainer.Flavour("singularity", (3, 4, 2)),
    "singularity 2.6.1": apptainer.Flavour("singularity", (2, 6, 1)),
}
NO_ROCM = ("singularity 3.4.2", "singularity 2.6.1")  # --rocm came with Singularity 3.5.0


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(("gpu", "flag"), [(None, None), ("nvidia", "--nv"), ("amd", "--rocm")])
def test_apptainer_flags(tmp_path, flavour, gpu, flag):
    private = charliecloud.Bind(str(tmp_path), "/tmp")
    request = ExecRequest(image="img", command=["x"], gpu=gpu, env=NVIDIA, private=private)
    if gpu == "amd" and flavour in NO_ROCM:
        with pytest.raises(ContainerKernelError, match=r"has no --rocm for AMD GPUs"):
            apptainer.exec_command("singularity", FLAVOURS[flavour], request, {})
        return
    argv = apptainer.exec_command("singularity", FLAVOURS[flavour], request, {}).argv
    flags = [a for a in argv[: argv.index("img")] if a in ("--nv", "--rocm")]
    assert flags == ([flag] if flag else [])


@pytest.fixture
def image_dir(tmp_path) -> Path:
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    return image


def ch_request(image: Path, gpu: str | None) -> ExecRequest:
    private = image.parent / "private"
    private.mkdir(exist_ok=True)
    return ExecRequest(image=str(image), command=["x"], gpu=gpu, env=NVIDIA,
                       host_private=str(private))  # fmt: skip


def test_ch_run_refuses_amd_and_says_why(image_dir):
    with pytest.raises(ContainerKernelError, match=r"cannot give AMD GPUs.*NVIDIA's libraries"):
        charliecloud.exec_command("ch-run", charliecloud.Flavour((0, 31)),
                                  ch_request(image_dir, "amd"), {})  # fmt: skip


def test_ch_run_nvidia_needs_an_image_prepared_by_ch_fromhost(image_dir):
    flavour = charliecloud.Flavour((0, 31))
    with pytest.raises(ContainerKernelError, match=f"`ch-fromhost --nvidia {image_dir}`"):
        charliecloud.exec_command("ch-run", flavour, ch_request(image_dir, "nvidia"), {})
    # what ch-fromhost leaves: the driver's libraries, and ldconfig's cache naming them
    (image_dir / "etc" / "ld.so.cache").write_bytes(b"glibc-ld.so.cache1.1\0libcuda.so.1\0")
    command = charliecloud.exec_command("ch-run", flavour, ch_request(image_dir, "nvidia"), {})
    assert not [a for a in command.argv if "gpu" in a or a in ("--nv", "--rocm")]
    assert "CUDA_VISIBLE_DEVICES='1,3'\n" in next(iter(command.files.values()))
    (image_dir / "etc" / "ld.so.cache").unlink()  # an image without a cache: the file itself
    (image_dir / "usr/lib64").mkdir(parents=True)
    (image_dir / "usr/lib64/libcuda.so.1").symlink_to("libcuda.so.535.54.03")
    charliecloud.exec_command("ch-run", flavour, ch_request(image_dir, "nvidia"), {})
    # no GPU asked: nothing checked
    (image_dir / "usr/lib64/libcuda.so.1").unlink()
    charliecloud.exec_command("ch-run", flavour, ch_request(image_dir, None), {})


# -- srun ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "slurm_args", "cpus"),
    [(None, [], None), (4, [], "--cpus-per-task=4"), (4, ["--partition=gpu"], "--cpus-per-task=4"),
     (4, ["-c", "2"], None), (4, ["-c2"], None), (4, ["--cpus-per-task=2"], None),
     (4, ["--cpus-per-task", "2"], None)],
)  # fmt: skip
def test_threads_ask_slurm_for_cpus_unless_slurm_args_do(threads, slurm_args, cpus):
    settings = ContainerSettings(image="/x.sif", threads=threads, slurm_args=slurm_args)
    argv = srun_launch(settings, "job", "/", {}).argv
    tail = [*slurm_args, sys.executable, "-m", "container_kernel.placements.node"]
    assert argv[-len(tail) :] == tail  # theirs, as given, last
    assert argv[: -len(tail)] == [
        "srun", "--job-name", "job", "--nodes=1", "--ntasks=1", "--kill-on-bad-exit=1",
        *([cpus] if cpus else []),
    ]  # fmt: skip


# -- in a real container --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nvidia_image(image, tmp_path_factory) -> Path:
    """A copy of the test image prepared as `ch-fromhost --nvidia` does, with a fake driver
    library: the library copied into the first folder of the image's library path under its
    host name, then `ldconfig` run in the image with `ch-run -w`, which links libcuda.so.1 and
    writes it in the cache."""
    folder = tmp_path_factory.mktemp("nvidia-image")
    prepared = folder / "image"
    subprocess.run(["cp", "-a", str(image), str(prepared)], check=True)
    source = folder / "empty.c"
    source.write_text("int cuInit(unsigned flags) { return flags ? 1 : 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    str(prepared / "usr/local/lib/libcuda.so.535.54.03"), str(source)],
                   check=True)  # fmt: skip
    user = {**os.environ, "USER": pwd.getpwuid(os.getuid()).pw_name}
    subprocess.run(["ch-run", "-w", str(prepared), "--", "/sbin/ldconfig"], check=True, env=user)
    assert b"libcuda.so.1\0" in (prepared / "etc/ld.so.cache").read_bytes()
    return prepared


@pytest.fixture
def host_allocation(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in HOST:
            monkeypatch.delenv(name)
    for name, value in HOST.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def magic(tmp_path, monkeypatch, image, runtime, host_allocation):
    """The in-process IPython shell with %container, the runtime under test, the host's fake
    allocation, and folders of its own."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    (tmp_path / "jupyter-runtime").mkdir(mode=0o700)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.delenv("CONTAINER_KERNEL_IMAGE", raising=False)
    ip = globalipapp.get_ipython()
    sections = ("ContainerMagics", "ContainerSettings")
    for section in sections:
        ip.config.pop(section, None)
    magics = ContainerMagics(shell=ip)
    ip.register_magics(magics)
    ip.run_line_magic("config", f"ContainerMagics.runtime = {runtime!r}")
    yield ip
    ip.configurables.remove(magics)
    for section in sections:
        ip.config.pop(section, None)


def seen_inside(ip, options: str, image: Path) -> tuple[dict[str, str], str]:
    """The environment `env` sees in the image, and what the runtime said on stderr."""
    ip.user_ns.pop("out", None)
    ip.run_line_magic("container", f"{options} --out out --err err {image} env")
    env = dict(line.split("=", 1) for line in ip.user_ns["out"].splitlines() if "=" in line)
    return env, ip.user_ns["err"]


@pytest.fixture
def image_for(runtime, image, nvidia_image):
    """The image to run with a vendor's GPUs: ch-run needs one that ch-fromhost prepared."""
    return lambda vendor: nvidia_image if (runtime, vendor) == ("charliecloud", "nvidia") else image


# (options, device files on the machine, the vendor that follows)
CASES = [("", (), None), ("--gpu=none", ("nvidia0",), None), ("--gpu", (), "nvidia"),
         ("--gpu=nvidia", (), "nvidia"), ("--gpu=amd", (), "amd"), ("--gpu=auto", (), None),
         ("--gpu=auto", ("nvidiactl",), "nvidia"), ("--gpu=auto", ("kfd",), "amd")]  # fmt: skip


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{o or 'default'}-{'+'.join(d)}" for o, d, _ in CASES]
)
def test_every_gpu_value_inside_a_container(magic, runtime, image_for, devices, case):
    options, present, vendor = case
    devices(*present)
    if runtime == "charliecloud" and vendor == "amd":
        with pytest.raises(UsageError, match="ch-run cannot give AMD GPUs"):
            seen_inside(magic, options, image_for(vendor))
        return
    env, err = seen_inside(magic, options, image_for(vendor))
    assert {k: v for k, v in env.items() if k in HOST} == EXPECTED[vendor]
    if runtime == "charliecloud":
        return
    if "apptainer_double" in shutil.which("apptainer"):  # it says which flag it got
        assert [w for w in NO_DRIVER.values() if w in err] == ([NO_DRIVER[vendor]] if vendor
                                                               else [])  # fmt: skip
        return
    # Real Apptainer finds no GPU and goes on quietly; the flag shows in the libraries it binds
    listing = f"sh -c 'ls {LIBS} 2>/dev/null; exit 0'"  # (none without a flag)
    magic.run_line_magic("container", f"{options} --out libs {image_for(vendor)} {listing}")
    assert BOUND_LIBRARY[vendor] in (magic.user_ns["libs"].split() or [None])


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_ch_run_refuses_an_image_that_ch_fromhost_did_not_prepare(magic, image):
    with pytest.raises(UsageError, match=f"`ch-fromhost --nvidia {image}`"):
        seen_inside(magic, "--gpu=nvidia", image)


def test_threads_inside_a_container(magic, image):
    env, _ = seen_inside(magic, "--threads 3 --env MKL_NUM_THREADS=1", image)
    assert [env[name] for name in THREADS] == ["3", "1", "3", "3"]
    env, _ = seen_inside(magic, "", image)
    assert not [name for name in THREADS if name in env]


def test_a_kernel_with_the_old_boolean(kernel_spec, notebook_dir, runtime, nvidia_image,
                                       host_allocation):  # fmt: skip
    """A kernel spec written before `gpu` took a vendor (`"gpu": true`) and `threads`."""
    name = kernel_spec("ck-gpu", image=str(nvidia_image), gpu=True, threads=2,
                       env={"OMP_NUM_THREADS": "5"})  # fmt: skip
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        env = json.loads(run(kc, "import os, json; print(json.dumps(dict(os.environ)))"))
    assert {k: v for k, v in env.items() if k in HOST} == EXPECTED["nvidia"]
    assert [env[name] for name in THREADS] == ["5", "2", "2", "2"]


# -- on the Slurm cluster -------------------------------------------------------------------------


@pytest.fixture
def cluster(slurm, runtime, monkeypatch, host_allocation) -> str:
    """The compute node's address; USER set, as ch-run needs it in the job; the server's own
    fake allocation set, which must not reach the job."""
    monkeypatch.setenv("USER", pwd.getpwuid(os.getuid()).pw_name)
    return slurm.address


@pytest.mark.slurm
@pytest.mark.parametrize("gpu", ["nvidia", "none"])
def test_a_slurm_job_sees_only_its_own_gpu(cluster, kernel_spec, notebook_dir, image_for, gpu):
    """node1's 2 fake GPUs: `--gres=gpu:1` gives the job one, and Slurm's CUDA_VISIBLE_DEVICES
    for it (not the server's fake "1,3"); without a GPU setting none of those goes in. The
    `threads` hint asks srun for as many CPUs (Slurm says so in SLURM_CPUS_PER_TASK)."""
    name = kernel_spec("ck-slurm-gpu", image=str(image_for(gpu)), placement="slurm", gpu=gpu,
                       threads=2, slurm_args=["--partition=gpu", "--gres=gpu:1"],
                       pass_env=["SLURM_CPUS_PER_TASK"])  # fmt: skip
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        assert km.ip == cluster
        env = json.loads(run(kc, "import os, json; print(json.dumps(dict(os.environ)))"))
    gpu_variables = {k: v for k, v in env.items() if k in HOST or "GPU" in k}
    if gpu == "nvidia":
        assert gpu_variables["CUDA_VISIBLE_DEVICES"] == "0"
        assert gpu_variables.get("SLURM_STEP_GPUS", gpu_variables.get("SLURM_JOB_GPUS")) in (
            "0", "1")  # the node's index of its GPU  # fmt: skip
        assert not set(gpu_variables) & (set(AMD) | set(OTHERS))
    else:
        assert gpu_variables == {}
    assert (env["SLURM_CPUS_PER_TASK"], env["OMP_NUM_THREADS"]) == ("2", "2")

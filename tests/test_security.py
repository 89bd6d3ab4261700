"""What a kernel must never see or reach, on every runtime: other kernels' keys and files, the
real home, host secrets and proxies; and hostile input carried literally or refused, never run.

Run as root and as an unprivileged user (scripts/test-as-user).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from kernels import run, running_kernel

from container_kernel.ground.errors import ContainerKernelError
from container_kernel.launch.sessions import sessions_root

pytestmark = pytest.mark.security

# Looks for `needle` in every regular file the kernel can read (/proc, /sys and /dev aside).
# The needle comes reversed: the kernel's own history holds the code it ran.
FIND = """
import os, sys
needle, hits = {reversed_needle!r}[::-1].encode(), []
for top, dirs, files in os.walk('/'):
    if top in ('/proc', '/sys', '/dev'):
        dirs[:] = []
        continue
    for name in files:
        path = os.path.join(top, name)
        try:
            if os.path.islink(path) or os.path.getsize(path) > 1 << 20:
                continue
            with open(path, 'rb') as f:
                if needle in f.read():
                    hits.append(path)
        except OSError:
            pass
print(hits)
"""


def test_no_kernel_finds_another_kernels_key_or_files(kernel_spec, notebook_dir, tmp_path):
    other_notebooks = tmp_path / "other"
    other_notebooks.mkdir()
    name = kernel_spec(home="temporary")
    with running_kernel(name, str(notebook_dir)) as (km_a, kc_a):
        key_a = km_a.session.key.decode()
        run(kc_a, "open('/tmp/a-was-here', 'w').write('A')")
        with running_kernel(name, str(other_notebooks)) as (_, kc_b):
            hits = run(kc_b, FIND.format(reversed_needle=key_a[::-1]), timeout=300)
            sees = run(kc_b, "import os; print(os.path.exists('/tmp/a-was-here'))")
    assert hits.strip() == "[]"
    assert sees.strip() == "False"


def test_private_files_are_ours_alone(kernel_spec, notebook_dir):
    with running_kernel(kernel_spec(home="temporary"), str(notebook_dir)) as (km, kc):
        session = km.provisioner._placement.session.folder
        home = km.provisioner._temporary_home
        inside = run(kc, "import os; print(oct(os.stat('/tmp').st_mode & 0o777))")
        # ours, not what the kernel wrote in its home with its own umask
        files = [p for p in session.rglob("*") if p.is_file() and not p.is_relative_to(home)]
        assert files  # the connection-file copy at least
        assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
        assert stat.S_IMODE(session.stat().st_mode) == 0o700
        assert stat.S_IMODE(sessions_root().stat().st_mode) == 0o700
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert inside.strip() == "0o700"
        if os.getuid() == 0:  # another user cannot read them
            for path in (*files, home):
                assert not _readable_by_nobody(path)


def _readable_by_nobody(path: Path) -> bool:
    nobody = pwd.getpwnam("nobody")
    check = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         "cat" if path.is_file() else "ls", str(path)],
        capture_output=True, check=False,
    )  # fmt: skip
    return check.returncode == 0


def test_the_real_home_and_its_local_packages_stay_out(kernel_spec, notebook_dir, real_home_tmp):
    site = real_home_tmp / "lib"
    site.mkdir()
    (site / "sneaky.py").write_text("raise SystemExit('imported from the real home')")
    with running_kernel(kernel_spec(), str(notebook_dir)) as (_, kc):
        out = run(
            kc,
            "import os, sys, json; "
            f"print(json.dumps([os.environ['HOME'], os.path.exists({str(real_home_tmp)!r}), "
            "sys.flags.no_user_site or os.environ.get('PYTHONNOUSERSITE')]))",
        )
    home, sees_real, no_user_site = json.loads(out)
    assert not sees_real
    assert home == pwd.getpwuid(os.getuid()).pw_dir  # the path is the user's, the folder fake
    assert no_user_site


SECRETS = {
    "JUPYTERHUB_API_TOKEN": "hub-token",
    "JPY_API_TOKEN": "hub-token",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "GITHUB_TOKEN": "gh-token",
    "http_proxy": "http://user:password@proxy:3128",
    "HTTPS_PROXY": "http://user:password@proxy:3128",
    "NO_PROXY": "localhost",
    "all_proxy": "socks5://proxy:1080",
}


def test_secrets_and_proxies_enter_only_when_named_exactly(kernel_spec, notebook_dir, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CK_HARMLESS", "1")
    everything = kernel_spec("ck-star", pass_env=["*"])
    named = kernel_spec("ck-named", pass_env=["JUPYTERHUB_API_TOKEN", "http_proxy"])
    probe = "import os, json; print(json.dumps(dict(os.environ)))"
    with running_kernel(everything, str(notebook_dir)) as (_, kc):
        env = json.loads(run(kc, probe))
    assert env["CK_HARMLESS"] == "1"  # the glob works
    assert not set(SECRETS) & set(env)
    with running_kernel(named, str(notebook_dir)) as (_, kc):
        env = json.loads(run(kc, probe))
    assert {k: v for k, v in env.items() if k in SECRETS} == {
        "JUPYTERHUB_API_TOKEN": "hub-token",
        "http_proxy": "http://user:password@proxy:3128",
    }


HOSTILE = {
    "SPACES": "  a value  with spaces ",
    "QUOTES": "'single' \"double\" 'unbalanced",
    "SHELL": "$(touch /tmp/pwned) `touch /tmp/pwned2` ; rm -rf ~ && echo $HOME ${PATH}",
    "PUNCT": "a,b=c:d;e|f&g>h<i*j?k[l]m\\n",
    "UNICODE": "ünïcødé ☃ 日本",
    "EMPTY": "",
    "LONG": "x" * 10_000,
}


@pytest.mark.parametrize(
    ("runtime", "version"),
    [("apptainer", None), ("apptainer-double", "apptainer version 1.0.2"),
     ("singularity-3.4", None), ("singularity-2.6", None), ("charliecloud", None)],
    indirect=["runtime"],
)  # fmt: skip
def test_hostile_values_arrive_byte_for_byte_and_never_run(
    kernel_spec, notebook_dir, monkeypatch, version, runtime
):
    if version:  # the double, as a version not built here (1.0.2: --env but no --no-eval)
        monkeypatch.setenv("APPTAINER_DOUBLE_VERSION", version)
    values = {**HOSTILE, "NEWLINE": "one\ntwo"} if runtime == "apptainer" else HOSTILE
    name = kernel_spec(env=values)
    with running_kernel(name, str(notebook_dir)) as (km, kc):
        env = json.loads(run(kc, "import os, json; print(json.dumps(dict(os.environ)))"))
        pwned = run(kc, "print(os.path.exists('/tmp/pwned') or os.path.exists('/tmp/pwned2'))")
        runtime_pid = km.provisioner.pid
        in_ps = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _pids_of_session(km)]
    assert {k: env.get(k) for k in values} == values
    assert pwned.strip() == "False"
    assert not Path("/tmp/pwned").exists()
    assert runtime_pid
    for cmdline in in_ps:  # values never in argv, where `ps` shows them to everyone
        assert HOSTILE["UNICODE"].encode() not in cmdline


def _pids_of_session(km) -> list[int]:
    from container_kernel.launch.sessions import marked_processes

    return marked_processes(km.provisioner._placement.session.name)


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_a_value_chrun_cannot_carry_is_refused_in_one_line(kernel_spec, notebook_dir):
    km = KernelManager(kernel_name=kernel_spec(env={"NEWLINE": "one\ntwo"}))
    with pytest.raises(ContainerKernelError, match=r"^ch-run cannot pass 'NEWLINE'.*$"):
        km.start_kernel(cwd=str(notebook_dir))
    assert list(sessions_root().iterdir()) == []


@pytest.mark.parametrize(
    "folder", ["nb with spaces", "nb $(touch pwned) `id`", "nb 'q' \"dq\" ü;&|", "nb,comma"]
)
def test_hostile_notebook_folders_are_used_literally(kernel_spec, tmp_path, folder, request):
    notebook = tmp_path / folder
    notebook.mkdir()
    (notebook / "data.txt").write_text("here")
    if request.node.callspec.params["runtime"] == "singularity-3.4" and (set(folder) & set(',"')):
        # its --bind cannot carry them (',' splits, '"' is CSV quoting) and a notebook under
        # /tmp cannot be its current-folder mount there: refused in one line, before a start
        refused = f"singularity 3.4.2 cannot bind {notebook}: ',', ':', '\"' or non-UTF-8"
        starting = running_kernel(kernel_spec(), str(notebook))
        with pytest.raises(ContainerKernelError, match=f"^{re.escape(refused)}"), starting:
            pass
        return
    with running_kernel(kernel_spec(), str(notebook)) as (_, kc):
        out = run(kc, "import os; print(open('data.txt').read(), os.path.exists('pwned'))")
    assert out.split() == ["here", "False"]
    assert not (notebook / "pwned").exists()
    assert not (tmp_path / "pwned").exists()


def test_a_shared_tmp_is_the_hosts_yet_holds_no_key(kernel_spec, notebook_dir, tmp_path):
    (tmp_path / "from-the-host").write_text("shared")  # tmp_path is in the host's /tmp
    with running_kernel(kernel_spec(share_tmp=True), str(notebook_dir)) as (km, kc):
        seen = run(kc, f"print(open({str(tmp_path / 'from-the-host')!r}).read())")
        connection_inside = run(kc, "import sys; print(sys.argv[sys.argv.index('-f') + 1])")
        key = km.session.key
    assert seen.strip() == "shared"
    assert not connection_inside.startswith("/tmp/") or "/.container-kernel-" in connection_inside
    host_tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    leaked = [
        path
        for path in host_tmp.glob("*.json")
        if path.is_file() and os.access(path, os.R_OK) and key in path.read_bytes()
    ]
    assert leaked == []


def test_a_host_value_that_is_not_utf8_arrives_byte_for_byte(
    kernel_spec, notebook_dir, monkeypatch
):
    """os.environ keeps such bytes as surrogates: ch-run's env file used to fail on them
    (UnicodeEncodeError), and Apptainer's JSON turned them into U+FFFD."""
    monkeypatch.setenv("CK_RAW", os.fsdecode(b"caf\xe9 \xff$(id)"))
    name = kernel_spec(pass_env=["CK_RAW"])
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        seen = run(kc, "import os; print(os.environb.get(b'CK_RAW', b'missing').hex())").strip()
    assert bytes.fromhex(seen) == b"caf\xe9 \xff$(id)"


@pytest.mark.parametrize("runtime", ["charliecloud"], indirect=True)
def test_a_name_chrun_cannot_carry_is_refused_for_what_it_is(kernel_spec, notebook_dir):
    km = KernelManager(kernel_name=kernel_spec(env={"BAD=NAME": "x"}))
    with pytest.raises(ContainerKernelError, match=r"^ch-run cannot pass the variable 'BAD=NAME'"):
        km.start_kernel(cwd=str(notebook_dir))
    assert list(sessions_root().iterdir()) == []


def test_a_kernel_cannot_change_the_provided_ipykernel(
    kernel_spec, notebook_dir, no_ipykernel_image, tmp_path, runtime
):
    """The ipykernel provided from the host is shared by every kernel of that Python: Apptainer
    binds it read-only; ch-run cannot, so its files are read-only on the host, which holds for an
    unprivileged user's kernel (root's may write anyway: a known limit, docs/runtimes.md)."""
    cache = tmp_path / "image-cache"
    name = kernel_spec(image=str(no_ipykernel_image), image_cache=str(cache))
    change = (
        "import ipykernel, os\n"
        "try:\n"
        "    open(os.path.join(os.path.dirname(ipykernel.__file__), 'planted.py'), 'w').close()\n"
        "    print('written')\n"
        "except OSError as err:\n"
        "    print(type(err).__name__)\n"
    )
    with running_kernel(name, str(notebook_dir)) as (_, kc):
        said = run(kc, change).strip()
    root_on_chrun = runtime == "charliecloud" and os.getuid() == 0
    assert said == "written" if root_on_chrun else said in ("OSError", "PermissionError")
    planted = list(cache.glob("kernels/*/ipykernel/planted.py"))
    assert bool(planted) == root_on_chrun

"""container-kernel's costs beside a hand-written kernel.json's, in one table (see its README).

    .venv/bin/python benchmarks/run.py [-n 7] [--runtimes charliecloud,apptainer-sandbox,
        apptainer-sif] [--quick] [--markdown]

Every measurement of a repetition runs before any of the next (round-robin, the order rotated
at each repetition), so a machine that gets busier slows every configuration alike. All a run
creates (Jupyter's folders, kernel specs, fake homes, a SIF, the kernels' output) is in one
temporary folder, removed at the end, and no process is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import kernels
import procs
import report

REPO = Path(__file__).resolve().parent.parent
DOUBLE_DIR = REPO / "tests" / "apptainer_double"
# Seconds between a kernel's first reply and its shutdown, in the early-shutdown row: its standby
# (started 0.5 s after the kernel listens) is starting then, and a shutdown must not wait for it.
EARLY_SHUTDOWN_WAIT = 0.7
RUNTIMES = ("charliecloud", "apptainer-sandbox", "apptainer-sif", "singularity-3.4-sandbox")
# The real runtimes scripts/real-runtimes builds (the double stands in for Apptainer without it)
REAL_APPTAINER = Path("/opt/apptainer/bin/apptainer")
REAL_SINGULARITY_34 = Path("/opt/realsing/v3.4/bin/singularity")
HOST = "host"
CONCURRENT = 16
SIF_NAME = "container-kernel-bench/python:1"  # the test image, in the tests' registry
PULL_TIMEOUT = 900  # a first push tars and gzips the whole image
TASK_BUDGET = 300  # seconds a measurement may take before it is stopped
DEBUG = "CK_BENCH_DEBUG"  # set: kernels' output and tracebacks on the terminal


@dataclass
class Runtime:
    label: str  # one of RUNTIMES
    setting: str  # the `runtime` setting: charliecloud, apptainer or singularity
    image: str
    executable: str = ""  # its `runtime_path`, where PATH would find another one
    specs: dict[str, str] = field(default_factory=dict)  # config (report.NAMES) -> spec name

    def exec_argv(self, *command: str) -> list[str]:
        if self.setting == "charliecloud":
            return ["ch-run", self.image, "--", *command]
        return [self.executable or self.setting, "exec", self.image, *command]

    @property
    def settings(self) -> dict[str, str]:
        """The settings that name this runtime."""
        named = {"runtime": self.setting}
        return {**named, "runtime_path": self.executable} if self.executable else named


@dataclass
class Run:
    root: Path
    cwd: str  # the notebooks' folder
    runtime_dir: Path  # Jupyter's: connection files
    concurrent: int
    standby: bool  # whether the `standby` setting exists
    samples: dict = field(default_factory=lambda: defaultdict(list))  # (group, kind, config)
    errors: dict = field(default_factory=lambda: defaultdict(list))  # (group, task) -> [str]
    notes: list[str] = field(default_factory=list)
    mounts_left: dict = field(default_factory=lambda: defaultdict(int))  # (group, task) -> n
    progress_fd: int = 2


def main() -> int:
    args = parse_args()
    image = build_image()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="ck-bench-") as tmp:
        root = Path(tmp)
        try:
            run = prepare(root, args)
            runtimes = find_runtimes(run, args.runtimes, image, args.sif)
            for rt in runtimes:
                write_specs(run, rt)
            shell = magic_shell()
            with output_to(run, root / "kernels.log"):
                asyncio.run(measure(run, runtimes, shell, args.n))
            loads.append(os.getloadavg()[0])
        finally:
            os.chdir(REPO)
            left = procs.leftovers(str(root))
            procs.kill(left)
            mounts = unmount_all(str(root))
    if left:
        run.notes.append(f"{len(left)} processes left at the end (killed): {list(left.values())}")
    if mounts:
        run.notes.append(f"{len(mounts)} FUSE mounts left at the end (unmounted): {mounts}")
    print(header(args, runtimes, loads))
    print()
    print(report.render(table(run, runtimes), args.markdown))
    if run.notes:
        print()
        for note in run.notes:
            print(f"- {note}" if args.markdown else f"note: {note}")
    return 0


def unmount_all(root: str) -> list[str]:
    """Unmount what is still mounted under `root` (so that it can be removed)."""
    mounts = procs.fuse_mounts(root)
    for point in mounts:
        if _quiet_run(["umount", "-l", point]).returncode != 0:
            _quiet_run(["fusermount", "-uz", point])
    return mounts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, help="repetitions (default 7; 3 with --quick)")
    parser.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help=f"comma-separated, of {', '.join(RUNTIMES)} (default: all; missing ones skipped)",
    )
    parser.add_argument(
        "--concurrent", type=int, help=f"kernels started at once (default {CONCURRENT}; 4 quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 3 repetitions, 4 kernels at once"
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--sif", metavar="PATH", help="a SIF of the test image (default: made by apptainer pull)"
    )
    args = parser.parse_args()
    args.n = args.n or (3 if args.quick else 7)
    args.concurrent = args.concurrent or (4 if args.quick else CONCURRENT)
    args.runtimes = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    unknown = set(args.runtimes) - set(RUNTIMES)
    if unknown:
        parser.error(f"unknown runtimes {', '.join(sorted(unknown))}; known: {', '.join(RUNTIMES)}")
    if args.n < 1 or args.concurrent < 1:
        parser.error("-n and --concurrent take a positive number")
    return args


def build_image() -> str:
    """The test image (scripts/build-image: built once, cached)."""
    out = subprocess.run(
        [REPO / "scripts" / "build-image"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"benchmarks: building the test image failed:\n{out.stderr}")
    return out.stdout.strip()


def prepare(root: Path, args: argparse.Namespace) -> Run:
    """Jupyter's folders in `root`, the apptainer double first on PATH, USER set (ch-run needs
    it), the notebooks' folder as working folder (where %%container runs)."""
    from container_kernel.settings import ContainerSettings

    folders = {name: root / name for name in ("path", "data", "runtime", "config", "ipython")}
    real = os.access(REAL_APPTAINER, os.X_OK)
    apptainer = REAL_APPTAINER if real else DOUBLE_DIR / "apptainer"
    for folder in (*folders.values(), root / "notebooks", root / "homes", root / "apptainer-tmp"):
        folder.mkdir(mode=0o700)
    os.environ.update(
        JUPYTER_PATH=str(folders["path"]),
        JUPYTER_DATA_DIR=str(folders["data"]),  # (fake homes: its container-kernel/homes)
        JUPYTER_RUNTIME_DIR=str(folders["runtime"]),  # (sessions: its container-kernel)
        JUPYTER_CONFIG_DIR=str(folders["config"]),
        IPYTHONDIR=str(folders["ipython"]),
        APPTAINER_CACHEDIR=str(root / "apptainer-cache"),  # (what `apptainer pull` caches)
        APPTAINER_TMPDIR=str(root / "apptainer-tmp"),  # (where a SIF is mounted)
        PATH=f"{apptainer.parent}{os.pathsep}{os.environ['PATH']}",
    )
    os.environ.setdefault("USER", pwd.getpwuid(os.getuid()).pw_name)
    cwd = str(root / "notebooks")
    os.chdir(cwd)
    run = Run(
        root=root,
        cwd=cwd,
        runtime_dir=folders["runtime"],
        concurrent=args.concurrent,
        standby="standby" in ContainerSettings.class_traits(),
    )
    run.notes.append(
        "apptainer rows: real Apptainer 1.4.5"
        if real
        else "apptainer rows: the TEST DOUBLE "
        "(bubblewrap), no real Apptainer here: build it with scripts/real-runtimes (as root)."
    )
    if not run.standby:
        run.notes.append(
            "standby rows skipped: ContainerSettings has no `standby` setting yet "
            "(they appear once it has)."
        )
    return run


def find_runtimes(run: Run, wanted: list[str], image: str, sif: str | None) -> list[Runtime]:
    """The runtimes asked for that work here; a note for each that does not."""
    found = []
    for label in wanted:
        if label == "charliecloud":
            if not shutil.which("ch-run"):
                run.notes.append("charliecloud skipped: no ch-run on PATH.")
                continue
            found.append(Runtime(label, "charliecloud", image))
        elif label == "apptainer-sandbox":
            found.append(Runtime(label, "apptainer", image))
        elif label == "singularity-3.4-sandbox":
            if not os.access(REAL_SINGULARITY_34, os.X_OK):
                run.notes.append(
                    f"{label} skipped: no {REAL_SINGULARITY_34} (scripts/real-runtimes)"
                )
                continue
            found.append(Runtime(label, "singularity", image, str(REAL_SINGULARITY_34)))
        else:
            path, why = sif_image(image, run.root, sif)
            if path is None:
                run.notes.append(f"apptainer-sif skipped: {why}")
                continue
            found.append(Runtime(label, "apptainer", path))
    for rt in list(found):
        out = _quiet_run(rt.exec_argv("true"))
        if out.returncode != 0:
            run.notes.append(f"{rt.label} skipped: `exec IMAGE true` failed: {_last_line(out)}")
            found.remove(rt)
    return found


def sif_image(image: str, root: Path, given: str | None) -> tuple[str | None, str]:
    """A SIF of the test image: `given`, else pulled into the run's folder as users get one:
    the image pushed to the tests' registry (scripts/registry: started for the pull if it was
    not running, and stopped again), then `apptainer pull X.sif docker://...`; checked with
    `apptainer exec X.sif true`. (None, why) when that does not work here."""
    if given:
        return str(Path(given).absolute()), ""
    registry = REPO / "scripts" / "registry"
    if not registry.is_file():
        return None, "no scripts/registry to pull from."
    started = _quiet_run([str(registry), "status"]).returncode != 0
    try:
        for step in (["up"], ["push", image, SIF_NAME]):
            out = _quiet_run([str(registry), *step], timeout=PULL_TIMEOUT)
            if out.returncode != 0:
                return None, f"`scripts/registry {step[0]}` failed: {_last_line(out)}"
        uri = out.stdout.strip()
        sif = root / "image.sif"
        out = _quiet_run(["apptainer", "pull", str(sif), uri], timeout=PULL_TIMEOUT)
        if out.returncode != 0 or not sif.is_file():
            return None, f"`apptainer pull X.sif {uri}` failed: {_last_line(out)}"
    finally:
        if started:
            _quiet_run([str(registry), "down"])
    check = _quiet_run(["apptainer", "exec", str(sif), "true"])
    if check.returncode != 0:
        return None, f"`apptainer exec X.sif true` failed: {_last_line(check)}"
    return str(sif), ""


def _quiet_run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def _last_line(out: subprocess.CompletedProcess) -> str:
    lines = (out.stderr or out.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {out.returncode}"


def write_specs(run: Run, rt: Runtime) -> None:
    """The kernel specs compared on runtime `rt`: hand-written, ours (standby off and on), and
    one that `container-kernel install` writes."""
    path = Path(os.environ["JUPYTER_PATH"])
    config = {"image": rt.image, **rt.settings}
    if run.standby:  # (its default may change: say it)
        config["standby"] = False
    home = run.root / "homes" / f"hand-{rt.label}"
    home.mkdir(mode=0o700)
    argv = kernels.hand_written_argv(
        rt.exec_argv()[0], rt.image, str(home), str(run.runtime_dir), run.cwd
    )
    rt.specs["hand"] = kernels.write_spec(path, f"hand-{rt.label}", argv, None)
    rt.specs["ours"] = kernels.write_spec(path, f"ck-{rt.label}", kernels.KERNEL, config)
    if run.standby:
        rt.specs["standby"] = kernels.write_spec(
            path, f"ck-standby-{rt.label}", kernels.KERNEL, {**config, "standby": True}
        )
    name = f"ck-installed-{rt.label}"
    cli = Path(sys.executable).parent / "container-kernel"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in rt.settings.items()]
    out = _quiet_run([str(cli), "install", rt.image, "--name", name, "--python", "python3",
                      *flags, "--user"])  # fmt: skip
    if out.returncode == 0:
        rt.specs["installed"] = name
    else:
        run.notes.append(f"{rt.label}: `container-kernel install` failed: {_last_line(out)}")


def magic_shell():
    """A host IPython with `%load_ext container_kernel`, as a notebook's kernel would have."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    shell = InteractiveShell.instance(config=Config({"HistoryManager": {"enabled": False}}))
    shell.run_line_magic("load_ext", "container_kernel")
    return shell


@contextlib.contextmanager
def output_to(run: Run, log: Path):
    """Point this process's stdout and stderr, which the kernels inherit (banners, warnings),
    at `log`; progress still shows on the terminal, and the log's end if the run fails."""
    if os.environ.get(DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    run.progress_fd = saved[1]
    failed = True
    try:
        yield
        failed = False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        run.progress_fd = 2
        if failed:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            sys.stderr.write("benchmarks: the run failed; the end of the kernels' output:\n")
            sys.stderr.write("\n".join(tail) + "\n")


def progress(run: Run, text: str) -> None:
    if os.isatty(run.progress_fd):
        os.write(run.progress_fd, f"\r\033[K{text}".encode())


async def measure(run: Run, runtimes: list[Runtime], shell, n: int) -> None:
    """Warm up (page cache, first-use costs), then `n` repetitions of every task, round-robin."""
    host = kernels.write_spec(
        Path(os.environ["JUPYTER_PATH"]),
        "host-ipykernel",
        [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        None,
    )
    tasks = [(HOST, HOST, _lifecycle(run, HOST, HOST, host, restart=True))]
    for rt in runtimes:
        tasks += [(rt.label, "floor", _floor(rt)), (rt.label, "magic", _magic(rt, shell))]
        for config, spec in rt.specs.items():
            work = _lifecycle(run, rt.label, config, spec, restart=config != "installed")
            tasks.append((rt.label, config, work))
        for config in ("hand", "ours"):
            tasks.append((rt.label, f"many-{config}", _many(run, rt.label, config, rt.specs)))
        for config in ("ours", "standby"):
            if config in rt.specs:
                work = _early_shutdown(run, rt.label, config, rt.specs[config])
                tasks.append((rt.label, f"shutdown-{config}", work))
    signal.signal(signal.SIGALRM, _raise_stuck)
    progress(run, "warming up")
    for rt in runtimes:
        for _ in range(2):
            _quiet_run(rt.exec_argv("python3", "-c", "pass"))
    for group, task, work in tasks:
        if not task.startswith(("many-", "floor", "shutdown-")):
            await _guard(run, group, task, work, record=False)
    for rep in range(n):
        shift = rep % len(tasks)
        for group, task, work in tasks[shift:] + tasks[:shift]:
            progress(run, f"repetition {rep + 1}/{n}: {group} {task}")
            await _guard(run, group, task, work)
    progress(run, "")


class Stuck(Exception):
    """A measurement that blocked the event loop in a call that never returned."""


def _raise_stuck(_signum, _frame) -> None:
    msg = f"blocked the event loop for over {TASK_BUDGET} s (interrupted)"
    raise Stuck(msg)


async def _within_budget(coro):
    """`coro` as a task; past TASK_BUDGET it is cancelled, or, if the event loop is blocked
    (a blocking call in it that never returns), that call is interrupted by a SIGALRM from a
    watchdog thread, whose handler raises Stuck there."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    done = threading.Event()

    def watch() -> None:
        if done.wait(TASK_BUDGET):
            return
        responsive = threading.Event()
        loop.call_soon_threadsafe(responsive.set)
        if responsive.wait(5):
            loop.call_soon_threadsafe(task.cancel)
        else:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGALRM)

    threading.Thread(target=watch, daemon=True).start()
    try:
        return await task
    finally:
        done.set()


async def _guard(run: Run, group: str, task: str, work, record: bool = True) -> None:
    """One measurement; a failure is noted (the run goes on) and leaves nothing running. A FUSE
    mount it leaves (the apptainer double's SIF mount, when its runtime parent was SIGKILLed)
    is counted."""
    mounts = len(procs.fuse_mounts(str(run.root)))
    try:
        values = await _within_budget(work())
    except asyncio.CancelledError:
        run.errors[group, task].append(f"took over {TASK_BUDGET} s (cancelled)")
        procs.kill(await procs.wait_gone(timeout=5))
        return
    except Exception as err:  # whatever failed, it is reported with the table
        text = str(err) if isinstance(err, kernels.KernelFailed) else f"{type(err).__name__}: {err}"
        run.errors[group, task].append(text)
        if os.environ.get(DEBUG):
            traceback.print_exc()
        procs.kill(await procs.wait_gone(timeout=5))
        return
    finally:
        if (added := len(procs.fuse_mounts(str(run.root))) - mounts) > 0:
            run.mounts_left[group, task] += added
    if record:
        for (kind, config), value in values.items():
            run.samples[group, kind, config].append(value)


def _lifecycle(run: Run, group: str, config: str, spec: str, restart: bool):
    async def work() -> dict:
        after = config == "standby"  # (its kernel after a restart came from the standby)
        out = await kernels.lifecycle(spec, run.runtime_dir, run.cwd, restart=restart, after=after)
        values = {
            ("start", config): out["start"] * 1000,
            ("start-phases", config): out["start_phases"],
        }
        if restart:
            values[("restart", config)] = out["restart"] * 1000
            values[("restart-phases", config)] = out["restart_phases"]
            values[("restart-forced", config)] = out["restart_forced"]
            for kind in ("rss", "pss", "rss_other", "pss_other"):
                for key in (kind, f"{kind}_after") if after else (kind,):
                    values[(key.replace("_", "-"), config)] = out[key]
        if out["left"]:
            values[("left", config)] = len(out["left"])
            procs.kill(out["left"])
        return values

    return work


def _early_shutdown(run: Run, group: str, config: str, spec: str):
    async def work() -> dict:
        out = await kernels.early_shutdown(spec, run.runtime_dir, run.cwd, EARLY_SHUTDOWN_WAIT)
        values = {("shutdown", config): out["shutdown"] * 1000}
        if out["left"]:
            values[("left", config)] = len(out["left"])
            procs.kill(out["left"])
        return values

    return work


def _floor(rt: Runtime):
    async def work() -> dict:
        started = time.perf_counter()
        out = _quiet_run(rt.exec_argv("python3", "-c", "pass"))
        elapsed = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(_last_line(out))
        return {("floor", ""): elapsed * 1000}

    return work


def _magic(rt: Runtime, shell):
    async def work() -> dict:
        sink = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            flags = " ".join(f"--{k.replace('_', '-')}={v}" for k, v in rt.settings.items())
            shell.run_cell_magic("container", f"{flags} {rt.image}", "pass")
        return {("magic", ""): (time.perf_counter() - started) * 1000}

    return work


def _many(run: Run, group: str, config: str, specs: dict[str, str]):
    async def work() -> dict:
        out = await kernels.many(specs[config], run.concurrent, run.runtime_dir, run.cwd)
        procs.kill(out["left"])
        if out["answered"] < run.concurrent:
            run.errors[group, f"many-{config}"].append(out["error"])
        return {("many", config): out["wall"] * 1000, ("many-answered", config): out["answered"]}

    return work


def table(run: Run, runtimes: list[Runtime]) -> list[report.Row]:
    get = report.Samples(run.samples)
    rows = []
    for rt in runtimes:
        configs = list(rt.specs)
        rows += report.runtime_rows(get, rt.label, configs, run.concurrent)
        run.notes += report.notes(get, rt.label, configs)
    rows += report.host_rows(get)
    run.notes += report.notes(get, HOST, [HOST])
    for (group, task), count in run.mounts_left.items():
        run.notes.append(f"{group} {task}: left {count} FUSE mounts of the apptainer double (its "
                         "runtime parent was SIGKILLed)")  # fmt: skip
    for (group, task), errors in run.errors.items():
        run.notes.append(f"{group} {task}: failed {len(errors)} times, e.g. {errors[0]}")
    return rows


def header(args: argparse.Namespace, runtimes: list[Runtime], loads: list[float]) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = " -> ".join(f"{value:.1f}" for value in loads)
    return (
        f"container-kernel benchmarks, {when}: {args.n} repetitions, round-robin; "
        f"{os.cpu_count()} CPUs, 1-min load average {load} (start -> end); "
        f"runtimes: {', '.join(rt.label for rt in runtimes) or 'none'}.\n"
        "ratio: median / median of the same measurement of the hand-written kernel.json on the "
        "same runtime (the floor: of its start); %%container: its median minus the floor's."
    )


if __name__ == "__main__":
    sys.exit(main())

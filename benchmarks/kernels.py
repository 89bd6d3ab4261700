"""Kernels under the stopwatch: their specs, and start, restart and many-at-once starts timed as
Jupyter Server does them (an AsyncIOLoopKernelManager; restart_kernel(now=False); then one
kernel_info_request on a new shell socket, its reply the end of the clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from pathlib import Path

import procs
from jupyter_client.ioloop import AsyncIOLoopKernelManager

KERNEL = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
REPLY_TIMEOUT = 90.0

# jupyter_client's steps of a start and of a restart (which shuts the old kernel down first:
# SIGINT, shutdown_request, waiting for it to exit, polled every 0.1 s, with SIGTERM at
# shutdown_wait_time / 2 and SIGKILL at its end), in the order they run.
PHASES = {
    "_async_interrupt_kernel": "sigint",
    "_async_request_shutdown": "request",
    "_async_finish_shutdown": "exit",
    "_async_cleanup_resources": "cleanup",
    "_async_pre_start_kernel": "pre",
    "_async_launch_kernel": "launch",
    "_async_post_start_kernel": "post",
}


class KernelFailed(Exception):
    """A kernel that failed a measurement; the message says what became of it."""


class TimedKernelManager(AsyncIOLoopKernelManager):
    """Jupyter Server's kind of KernelManager, recording how long each step takes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.phases: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def _phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started


def _timed(method_name: str, phase: str):
    async def timed(self, *args, **kwargs):
        async with self._phase(phase):
            return await getattr(AsyncIOLoopKernelManager, method_name)(self, *args, **kwargs)

    timed.__name__ = method_name
    return timed


for _method, _phase_name in PHASES.items():
    setattr(TimedKernelManager, _method, _timed(_method, _phase_name))


def write_spec(jupyter_path: Path, name: str, argv: list[str], config: dict | None) -> str:
    """A kernel.json in `jupyter_path`/kernels/`name`; with `config`, through our provisioner."""
    spec: dict = {
        "argv": argv,
        "display_name": name,
        "language": "python",
        "interrupt_mode": "signal",
    }
    if config is not None:
        spec["metadata"] = {
            "kernel_provisioner": {"provisioner_name": "container-provisioner", "config": config}
        }
    folder = jupyter_path / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return name


def hand_written_argv(
    executable: str, image: str, home: str, runtime_dir: str, cwd: str
) -> list[str]:
    """What a user writes by hand: a clean environment, a fake home, the connection file's
    folder (Jupyter's runtime folder) bound, the notebook's folder as working folder (values
    literal: `--no-eval` where the runtime has it, Apptainer)."""
    if executable == "ch-run":
        return ["ch-run", "--unset-env=*", "--env-no-expand", "--set-env=HOME=/root",
                "-b", f"{home}:/root", "-b", f"{runtime_dir}:{runtime_dir}", "-c", cwd,
                image, "--", *KERNEL]  # fmt: skip
    no_eval = ["--no-eval"] if "apptainer" in executable else []
    return [executable, "exec", "--cleanenv", *no_eval, "--home", f"{home}:/root",
            "--bind", runtime_dir, "--pwd", cwd, image, *KERNEL]  # fmt: skip


def _manager(name: str, runtime_dir: Path) -> TimedKernelManager:
    kernel_id = str(uuid.uuid4())
    return TimedKernelManager(
        kernel_name=name,
        kernel_id=kernel_id,
        connection_file=str(runtime_dir / f"kernel-{kernel_id}.json"),
    )


async def first_reply(km: TimedKernelManager, timeout: float = REPLY_TIMEOUT) -> None:
    """As Jupyter Server after a start or restart: a new shell socket, one
    kernel_info_request, its reply."""
    sock = km._create_connected_socket("shell")  # (connect_shell: a ZMQStream here)
    try:
        km.session.send(sock, "kernel_info_request")
        while True:
            try:
                frames = await asyncio.wait_for(sock.recv_multipart(), timeout)
            except asyncio.TimeoutError:
                msg = f"no kernel_info reply in {timeout:.0f} s"
                raise TimeoutError(msg) from None
            _idents, message = km.session.feed_identities(frames)
            if km.session.deserialize(message)["msg_type"] == "kernel_info_reply":
                return
    finally:
        sock.close(linger=0)


async def _memory(km: TimedKernelManager) -> dict[str, float]:
    """Once all is idle: MB of the kernel's processes (rss, pss) and of the others this process
    started (rss_other, pss_other: a standby)."""
    await procs.settle()
    snap = procs.snapshot()
    tree = procs.kernel_tree(km.provisioner.process.pid, snap)
    other = procs.descendants(os.getpid(), snap) - tree
    return {
        "rss": procs.rss_mb(tree, snap),
        "pss": procs.pss_mb(tree),
        "rss_other": procs.rss_mb(other, snap),
        "pss_other": procs.pss_mb(other),
    }


async def _gone(pid: int, started: float) -> float:
    """When the old runtime parent exited (a zombie, or reaped), from `started`: looked at every
    5 ms, it tells the old kernel's own exit from jupyter_client's 0.1 s polling of it."""
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            return time.perf_counter() - started
        if stat[stat.rfind(")") + 2] in "ZX":
            return time.perf_counter() - started
        await asyncio.sleep(0.005)


def _state(km: TimedKernelManager) -> str:
    """What became of a kernel that failed: its runtime parent, and its last words (ours keep
    the runtime's stderr's last lines)."""
    process = getattr(km.provisioner, "process", None)
    if process is None:
        return "not started"
    status = process.poll()
    state = "running" if status is None else f"exited with status {status}"
    tail = [line.strip() for line in getattr(km.provisioner, "_stderr_tail", None) or ()]
    return f"its runtime {state}" + (f"; its stderr's last line: {tail[-1]}" if tail else "")


async def _stop(km: TimedKernelManager, failed: bool = False) -> None:
    """Shut down as Jupyter Server does, with a shutdown_request first (the apptainer double, if
    SIGKILLed, leaves its SIF's squashfuse mount behind); a kernel that failed or died is killed
    instead: jupyter_client sends that request with a blocking send, which blocks the event loop
    for good when the control port it connected to is not the kernel's (a kernel that died
    because another process had taken one of its ports)."""
    with contextlib.suppress(Exception):  # (a start that failed may have nothing to stop)
        if km.has_kernel:
            await km.shutdown_kernel(now=failed or not await km.is_alive())
        else:
            await km.cleanup_resources()


async def lifecycle(
    name: str, runtime_dir: Path, cwd: str, *, restart: bool, after: bool = False
) -> dict:
    """Start to first reply; with `restart`: wait until all is idle, the kernel's memory and the
    rest's (a standby), then restart to first reply (`after`: and the memory again, once idle).
    Then shut down; what stays is reported."""
    km = _manager(name, runtime_dir)
    out: dict = {}
    failed = True
    try:
        started = time.perf_counter()
        await km.start_kernel(cwd=cwd)
        returned = time.perf_counter()
        await first_reply(km)
        out["start"] = time.perf_counter() - started
        out["start_phases"] = {**km.phases, "reply": time.perf_counter() - returned}
        if restart:
            out.update(await _memory(km))
            km.phases.clear()
            started = time.perf_counter()
            gone = asyncio.create_task(_gone(km.provisioner.process.pid, started))
            await km.restart_kernel(now=False)
            returned = time.perf_counter()
            await first_reply(km)
            out["restart"] = time.perf_counter() - started
            out["restart_phases"] = {**km.phases, "reply": time.perf_counter() - returned}
            if gone.done():  # (counted from the shutdown_request)
                out["restart_phases"]["gone"] = gone.result() - km.phases.get("sigint", 0.0)
            gone.cancel()
            if after:
                out.update({f"{k}_after": v for k, v in (await _memory(km)).items()})
            out["restart_forced"] = km._shutdown_status.name != "ShutdownRequest"
        failed = False
    except Exception as err:
        msg = f"{type(err).__name__}: {err} ({_state(km)})"
        raise KernelFailed(msg) from err
    finally:
        await _stop(km, failed)
        out["left"] = await procs.wait_gone()
    return out


async def early_shutdown(name: str, runtime_dir: Path, cwd: str, wait: float) -> dict:
    """Start to first reply, `wait` seconds more (a standby is starting by then), then how long
    a shutdown takes, as Jupyter Server's (a shutdown_request first); what stays is reported."""
    km = _manager(name, runtime_dir)
    failed = True
    try:
        await km.start_kernel(cwd=cwd)
        await first_reply(km)
        await asyncio.sleep(wait)
        started = time.perf_counter()
        await km.shutdown_kernel(now=False)
        took = time.perf_counter() - started
        failed = False
    except Exception as err:
        msg = f"{type(err).__name__}: {err} ({_state(km)})"
        raise KernelFailed(msg) from err
    finally:
        if failed:
            await _stop(km, failed)
    return {"shutdown": took, "left": await procs.wait_gone()}


async def many(name: str, count: int, runtime_dir: Path, cwd: str) -> dict:
    """`count` kernels started at once (one event loop, as a server's): the wall time until the
    last one answers, and how many did."""
    kms = [_manager(name, runtime_dir) for _ in range(count)]

    async def one(km: TimedKernelManager) -> None:
        await km.start_kernel(cwd=cwd)
        await first_reply(km)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(km) for km in kms), return_exceptions=True)
    wall = time.perf_counter() - started
    failures = [
        f"kernel {i + 1}: {type(result).__name__}: {result} ({_state(km)})"
        for i, (km, result) in enumerate(zip(kms, results, strict=True))
        if isinstance(result, BaseException)
    ]
    stops = (_stop(km, isinstance(r, BaseException)) for km, r in zip(kms, results, strict=True))
    await asyncio.gather(*stops)
    return {
        "wall": wall,
        "answered": count - len(failures),
        "error": "; ".join(failures) or None,
        "left": await procs.wait_gone(),
    }

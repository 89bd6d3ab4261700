"""Start a kernel through jupyter_client, run code in it, read what it printed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_core.paths import jupyter_runtime_dir


@contextlib.contextmanager
def running_kernel(
    name: str, cwd: str, **manager_options
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    # Where Jupyter Server puts connection files (a standalone KernelManager uses /tmp).
    connection_file = Path(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")
    km = KernelManager(kernel_name=name, connection_file=str(connection_file), **manager_options)
    try:
        km.start_kernel(cwd=cwd)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            yield km, kc
        finally:
            kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=False)
    finally:  # a start or restart that raised: jupyter_client leaves its ZMQ context open
        if not km.context.closed:
            km.context.destroy(linger=0)


def run(kc: BlockingKernelClient, code: str, timeout: float = 60) -> str:
    """Execute `code`; return its stdout, raising if the cell raised."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content["name"] == "stdout":
            out.append(content["text"])
        elif kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    if reply["content"]["status"] == "error" and not errors:
        errors.append(reply["content"].get("ename", "error"))
    if errors:
        raise KernelError(errors[0])
    return "".join(out)


class KernelError(Exception):
    """The cell raised inside the kernel."""

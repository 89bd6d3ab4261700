"""JupyterLab's debugger through a container kernel: the spec says `metadata.debugger` exactly
when the image's ipykernel can debug (ipykernel >= 6 with debugpy inside), and then the Debug
Adapter Protocol works over the control channel: a breakpoint stops a cell inside the image."""

from __future__ import annotations

import itertools

import pytest
from kernels import running_kernel
from test_cli import container_kernel, installed, jupyter_folders

TIMEOUT = 60
CODE = """def f(a, b):
    c = a + b
    return c

f(2, 3)"""
_seq = itertools.count(1)


@pytest.fixture
def isolated(tmp_path, monkeypatch, runtime):
    return jupyter_folders(tmp_path, monkeypatch)


def debug_request(kc, command: str, arguments: dict | None = None) -> dict:
    """One DAP request on the control channel; its reply's content."""
    content = {"type": "request", "seq": next(_seq), "command": command}
    msg = kc.session.msg("debug_request", {**content, "arguments": arguments or {}})
    kc.control_channel.send(msg)
    while True:
        reply = kc.get_control_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply["content"]


def image_has_debugpy(image, runtime) -> bool:
    """What the CLI's probe says of the image (python3 -c 'import debugpy' inside)."""
    out = container_kernel("check", str(image), "--runtime", runtime)
    assert out.returncode == 0, out.stdout
    line = next(line for line in out.stdout.splitlines() if line.startswith("ok   debugger:"))
    return line.startswith("ok   debugger: yes, debugpy ")


def test_debugger_metadata_follows_the_image_and_a_breakpoint_stops(isolated, image, runtime):
    assert container_kernel("install", str(image), "--name", "dbg").returncode == 0
    spec = installed(isolated / "user" / "kernels" / "dbg")
    if not image_has_debugpy(image, runtime):
        assert spec["metadata"]["debugger"] is False  # no debugpy: no debugger claimed
        return
    assert spec["metadata"]["debugger"] is True
    with running_kernel("dbg", str(isolated)) as (_, kc):
        initialized = debug_request(kc, "initialize", {
            "clientID": "test", "clientName": "pytest", "adapterID": "", "pathFormat": "path",
            "linesStartAt1": True, "columnsStartAt1": True, "supportsVariableType": True,
            "supportsVariablePaging": True, "supportsRunInTerminalRequest": True, "locale": "en",
        })  # fmt: skip
        assert initialized["success"], initialized
        assert debug_request(kc, "attach")["success"]
        source = debug_request(kc, "dumpCell", {"code": CODE})["body"]["sourcePath"]
        breakpoints = debug_request(kc, "setBreakpoints", {
            "breakpoints": [{"line": 2}], "source": {"path": source}, "sourceModified": False,
        })  # fmt: skip
        assert breakpoints["success"]
        assert breakpoints["body"]["breakpoints"][0]["verified"]
        assert debug_request(kc, "configurationDone")["success"]

        msg_id = kc.execute(CODE)
        stopped = wait_for_event(kc, "stopped")
        assert stopped["body"]["reason"] == "breakpoint"
        thread = stopped["body"]["threadId"]
        frames = debug_request(kc, "stackTrace", {"threadId": thread})["body"]["stackFrames"]
        assert (frames[0]["line"], frames[0]["source"]["path"]) == (2, source)
        scopes = debug_request(kc, "scopes", {"frameId": frames[0]["id"]})["body"]["scopes"]
        local = next(scope for scope in scopes if scope["name"] == "Locals")
        variables = debug_request(
            kc, "variables", {"variablesReference": local["variablesReference"]}
        )
        values = {v["name"]: v["value"] for v in variables["body"]["variables"]}
        assert (values["a"], values["b"]) == ("2", "3")
        assert debug_request(kc, "continue", {"threadId": thread})["success"]
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        assert (reply["parent_header"]["msg_id"], reply["content"]["status"]) == (msg_id, "ok")
        assert debug_request(kc, "disconnect", {"restart": False, "terminateDebuggee": True})


def test_no_debugpy_means_no_debugger_claimed(isolated, image, runtime, tmp_path):
    """An image whose Python cannot import debugpy (here: a debugpy that fails to import, put
    first on its path) gets `metadata.debugger = false`."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "debugpy.py").write_text("raise ImportError('no debugpy here')\n")
    hide = ["-B", f"{shadow}:/tmp/shadow", "--env", "PYTHONPATH=/tmp/shadow"]
    out = container_kernel("install", str(image), "--name", "nodbg", "--runtime", runtime, *hide)
    assert out.returncode == 0, out.stderr
    assert "no debugger" in out.stdout
    spec = installed(isolated / "user" / "kernels" / "nodbg")
    assert spec["metadata"]["debugger"] is False
    assert spec["metadata"]["container_kernel"]["probe"]["debugpy"] is None


def wait_for_event(kc, event: str) -> dict:
    """The next debug_event `event` on IOPub."""
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["msg_type"] == "debug_event" and msg["content"].get("event") == event:
            return msg["content"]

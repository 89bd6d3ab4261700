"""CurveZMQ for a kernel on another node: whether its spec declares an ipykernel that applies
the keys jupyter_client makes (metadata.supported_encryption), and why not when required."""

from __future__ import annotations

import zmq


def spec_encrypts(kernel_spec) -> bool:
    """Whether the spec declares an ipykernel that applies CurveZMQ keys (and ours can)."""
    declared = (kernel_spec.metadata or {}).get("supported_encryption") or ()
    declared = [declared] if isinstance(declared, str) else declared
    return "curve" in {str(item).lower() for item in declared} and zmq.has("curve")


def cannot_encrypt() -> str:
    why = (
        "this server's pyzmq has no CURVE support"
        if not zmq.has("curve")
        else "its kernel spec does not declare metadata.supported_encryption ['curve']: the "
        "image needs ipykernel 7 (reinstall the spec with `container-kernel install`, which "
        "detects it)"
    )
    return (
        f"Encrypted channels are required (encryption = 'required') for a kernel on a "
        f"compute node, but {why}."
    )

"""The one error type users see: a single line that says what is wrong and what to do."""


class ContainerKernelError(RuntimeError):
    """A launch cannot go ahead (missing runtime, missing image, bad bind, kernel died at start)."""

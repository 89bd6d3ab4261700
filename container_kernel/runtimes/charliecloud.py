"""Charliecloud (`ch-run`), an unprivileged HPC runtime: directory and SquashFS images.

Quirks handled here: ch-run passes the host environment unless told (`--unset-env=*`), expands
`$` in `--set-env` unless `--env-no-expand`, refuses to start without `$USER`, cannot create a
mount point: it must exist, in the image or on the host under a bind (/tmp is one), and has no
read-only binds or GPU flag (NVIDIA GPUs need an image prepared once with `ch-fromhost
--nvidia`). Folders the launch layer lets move (`Bind.staging`) are bound under a staging folder
in `/tmp` when their own path cannot be created; paths in the command follow.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..ground.errors import ContainerKernelError
from .base import Bind, Command, ExecRequest, Fact, Progress, Runtime, Store, with_user
from .pulls import cache_key, run_pull

# The NVIDIA driver's CUDA library, which `ch-fromhost --nvidia` puts in an image, and where it
# may be found in an image without an ld.so.cache.
NVIDIA_LIBRARY = "libcuda.so.1"
LIBRARY_FOLDERS = ("usr/local/lib", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
                   "usr/lib64", "usr/lib", "lib64", "lib")  # fmt: skip
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Flavour:
    version: tuple[int, ...]
    forwards_signals = False  # ch-run execs the command: signals reach it directly
    mounts_in_private_tmp = True  # (a folder of ours: its mount points are made there)

    def __str__(self) -> str:
        return f"charliecloud {'.'.join(map(str, self.version))}"


def parse_version(text: str) -> Flavour:
    if match := re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text):
        return Flavour(tuple(int(n or 0) for n in match.groups()))
    msg = f"Cannot tell which Charliecloud this is from `ch-run --version`: {text.strip()!r}."
    raise ContainerKernelError(msg)


def staging_name() -> str:
    """The folder of empty mount points in the container's /tmp, one per user, with one folder
    per launch's session in it (removed when the session ends: Command.created)."""
    return f".container-kernel-{os.getuid()}"


def exec_command(
    executable: str, flavour: Flavour, request: ExecRequest, host_env: Mapping[str, str]
) -> Command:
    """The argv, the ch-run process's environment and its env file that run `request`."""
    _refuse_unsupported(request)
    if "://" in request.image:
        msg = (
            f"ch-run runs local images, not {request.image}: pull it first (ch-image, ch-convert)."
        )
        raise ContainerKernelError(msg)
    image = Path(request.image)
    if not (image.is_dir() or _is_squashfs(image)):
        msg = f"ch-run runs directory or SquashFS images; {image} is neither (see ch-convert)."
        raise ContainerKernelError(msg)

    # ch-run's /tmp is the host's $TMPDIR (or /tmp), unless a private one is bound over it:
    # the one place it can mount new folders.
    host_tmp = Bind(request.tmp or host_env.get("TMPDIR") or "/tmp", "/tmp")
    # Our folders that cannot go where asked are staged there, in a folder of this session's.
    tag = Path(request.host_private).name if request.host_private else ""
    stage = Staging(Path(host_tmp.src), tag)
    moved: dict[str, str] = {}  # destination -> where it really goes inside
    binds: list[Bind] = []
    for asked in ([request.home] if request.home else []) + list(request.binds):
        bind = replace(asked, dst=_follow(asked.dst, moved))
        _refuse_colon(bind)
        if request.tmp and _within(bind.dst, "/tmp"):  # a folder of ours: make the mount point
            Path(request.tmp, bind.dst[len("/tmp/") :]).mkdir(parents=True, exist_ok=True)
        elif request.host_private and not _can_mount_at(image, bind.dst, [host_tmp, *binds]):
            _skeleton(image, bind.dst, binds, Path(request.host_private, "skeleton"))
        placed = _place(image, bind, [host_tmp, *binds], stage)
        if placed.dst != asked.dst:
            moved[asked.dst] = placed.dst
        binds.append(placed)

    argv = [executable]
    if request.cleanenv:
        argv.append("--unset-env=*")
    argv.append("--env-no-expand")
    env = {"PATH": DEFAULT_PATH} if request.cleanenv else {}
    if request.home:
        env["HOME"] = _follow(request.home.dst, moved)
    env.update(request.env)
    files = {}
    if env:  # in a file, not in argv, where `ps` would show every value
        if request.host_private is None:
            msg = "ch-run needs a private folder for the environment file."
            raise ContainerKernelError(msg)
        env_file = f"{request.host_private}/ch-run.env"
        files[env_file] = _env_file(env)
        argv.append(f"--set-env={env_file}")
    if request.tmp:
        argv += ["-b", f"{request.tmp}:/tmp"]
    for bind in binds:
        argv += ["-b", f"{bind.src}:{bind.dst}"]
    if request.workdir:
        argv += ["-c", _follow(request.workdir, moved)]
    argv += [*request.extra_args, str(image), "--", *(_follow(a, moved) for a in request.command)]

    return Command(argv, with_user(host_env), files, created=stage.created)


def _env_file(env: Mapping[str, str]) -> str:
    """ch-run's NAME=VALUE lines; it strips one pair of single quotes around a value, so every
    value gets a pair (`'x'` arrives as `'x'`). A line holds no newline: such a value is refused."""
    lines = []
    for name, value in env.items():
        if "\n" in name or "=" in name:
            msg = f"ch-run cannot pass the variable {name!r}: a name holds no '=' or newline."
            raise ContainerKernelError(msg)
        if "\n" in value:
            msg = f"ch-run cannot pass {name!r}: its value holds a newline; use Apptainer."
            raise ContainerKernelError(msg)
        lines.append(f"{name}='{value}'\n")
    return "".join(lines)


def gpu_refusal(image: str, gpu: str | None) -> str | None:
    """Why ch-run cannot give `gpu` (a vendor, None: none) with this image; None if it can."""
    if gpu == "amd":
        return (
            "ch-run cannot give AMD GPUs: it has no GPU flag, and ch-fromhost adds NVIDIA's "
            "libraries only (--nvidia); use Apptainer (--rocm)."
        )
    path = Path(image)
    if gpu and not (_is_squashfs(path) or _has_nvidia_libraries(path)):
        return (
            f"ch-run has no GPU flag and {path} lacks the host's NVIDIA libraries: add them "
            f"once with `ch-fromhost --nvidia {path}` on a GPU node, or use Apptainer."
        )
    return None


def _refuse_unsupported(request: ExecRequest) -> None:
    if refusal := gpu_refusal(request.image, request.gpu):
        raise ContainerKernelError(refusal)
    # (our own read-only folders, an injected ipykernel, go read-write: they hold nothing the
    # user would lose and ch-run cannot do otherwise)
    if read_only := [b.spec() for b in request.binds if b.read_only and not b.staging]:
        msg = f"ch-run cannot bind read-only: {', '.join(read_only)}; drop ':ro' or use Apptainer."
        raise ContainerKernelError(msg)


def _has_nvidia_libraries(image: Path) -> bool:
    """Whether `ch-fromhost --nvidia` prepared the image: it copies the host's driver libraries
    (`nvidia-container-cli list --libraries`) into the first folder of the image's library path
    and runs ldconfig inside, whose cache then names libcuda.so.1. (A SquashFS file cannot be
    looked into: it is run as it is.)"""
    with contextlib.suppress(OSError):
        if NVIDIA_LIBRARY.encode() + b"\0" in (image / "etc/ld.so.cache").read_bytes():
            return True
    return any(os.path.lexists(image / folder / NVIDIA_LIBRARY) for folder in LIBRARY_FOLDERS)


@dataclass
class Staging:
    """Mount points for our folders in the container's /tmp: `<staging_name>/<tag>/<name>`
    (the host folder `root` is that /tmp)."""

    root: Path
    tag: str
    created: list[str] = field(default_factory=list)

    def place(self, name: str) -> str:
        """The mount point for `name`, made on the host; its path inside."""
        folder = _private_staging(str(self.root))
        if self.tag:
            folder = folder / self.tag
            if not folder.is_dir():
                folder.mkdir(mode=0o700)
                self.created.append(str(folder))
        (folder / name).mkdir(exist_ok=True)
        return "/".join(filter(None, ("/tmp", staging_name(), self.tag, name)))


def _place(image: Path, bind: Bind, earlier: list[Bind], stage: Staging) -> Bind:
    """Where `bind` can be mounted: its own destination if ch-run can mount there, else staged
    under the container's /tmp (`earlier[0]`, the host's $TMPDIR bound there).

    Inside a SquashFS file nothing is known without mounting it: our own folders are staged,
    user binds go where asked (ch-run's own error reports a missing destination).
    """
    mountable = _can_mount_at(image, bind.dst, earlier)
    if mountable or (mountable is None and not bind.staging):
        return bind
    if bind.staging:
        return replace(bind, dst=stage.place(bind.staging))
    msg = (
        f"ch-run cannot create {bind.dst} in the read-only image {image}: bind {bind.src} to a "
        "destination that exists in the image or is under /tmp."
    )
    raise ContainerKernelError(msg)


def _skeleton(image: Path, dst: str, binds: list[Bind], skeletons: Path) -> None:
    """Give `dst` its own path inside when the image has an empty folder on that path (/home,
    /mnt, /scratch...): a folder of ours, holding the path's folders as mount points, is bound
    over that empty one (it hides nothing). Adds that bind to `binds` when it is new."""
    if not image.is_dir():
        return  # a SquashFS file: its folders cannot be seen
    covering = next((b for b in reversed(binds) if b.staging == "skeleton" and
                     _within(dst, b.dst)), None)  # fmt: skip
    if covering is None:
        parent = os.path.dirname(dst.rstrip("/"))
        while parent != "/" and not (image / parent.lstrip("/")).is_dir():
            parent = os.path.dirname(parent)
        folder = image / parent.lstrip("/")
        if parent == "/" or folder.is_symlink() or not _empty(folder):
            return
        if any(_within(b.dst, parent) or _within(parent, b.dst) for b in binds):
            return  # another bind already goes there
        covering = Bind(str(skeletons / parent.lstrip("/")), parent, staging="skeleton")
        binds.append(covering)
    Path(covering.src, dst[len(covering.dst) :].lstrip("/")).mkdir(parents=True, exist_ok=True)


def _empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def _refuse_colon(bind: Bind) -> None:
    """`-b SRC:DST` splits on ':': say which folder cannot go in, and why."""
    if ":" in bind.src or ":" in bind.dst:
        what = "the notebook's folder" if bind.staging == "notebook" else "the folder"
        msg = f"ch-run cannot bind {what} {bind.src}: ':' in its path (-b splits on it); rename it."
        raise ContainerKernelError(msg)


def _private_staging(host_tmp: str) -> Path:
    """The staging folder in the shared /tmp: ours alone (another user could create it first)."""
    root = Path(host_tmp, staging_name())
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        msg = f"{root} is not a folder of yours: remove it, or ask an admin to."
        raise ContainerKernelError(msg)
    if info.st_mode & 0o077:
        root.chmod(0o700)
    return root


def _can_mount_at(image: Path, dst: str, earlier: list[Bind]) -> bool | None:
    """ch-run mounts only over an existing folder: in the image, or on the host for a path
    under another bind (`earlier` starts with /tmp's). None: unknown (inside a SquashFS file)."""
    for bind in reversed(earlier):
        if _within(dst, bind.dst):
            return os.path.isdir(bind.src + dst[len(bind.dst) :])
    if not image.is_dir():
        return None
    return (image / dst.lstrip("/")).is_dir()


def _is_squashfs(path: Path) -> bool:
    try:
        with path.open("rb") as image:
            return image.read(4) == b"hsqs"
    except OSError:
        return False


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _follow(path: str, moved: Mapping[str, str]) -> str:
    """`path` after the moves of staged binds (the longest moved folder that holds it wins)."""
    for old in sorted(moved, key=len, reverse=True):
        if _within(path, old):
            return moved[old] + path[len(old) :]
    return path


# ch-image locks its storage: one pull at a time (and no cleaning meanwhile).
STORAGE_LOCK = "ch-image-storage"


class Charliecloud(Runtime):
    """ch-run: runs directory and SquashFS images; pulls with ch-image."""

    name = "charliecloud"
    executables = ("ch-run",)
    cache_kind = "ch-image"  # folders in a ch-image storage of the store's own

    @classmethod
    def parse_version(cls, text: str) -> Flavour:
        return parse_version(text)

    def exec_command(self, request: ExecRequest, host_env: Mapping[str, str]) -> Command:
        return exec_command(self.executable, self.flavour, request, host_env)

    @property
    def forwards_signals(self) -> bool:
        return self.flavour.forwards_signals

    @property
    def mounts_in_private_tmp(self) -> bool:
        return self.flavour.mounts_in_private_tmp

    def pull(
        self, reference: str, store: Store, pull_args: Sequence[str], progress: Progress
    ) -> Path:
        """`ch-image pull` into the store's storage, under a new name each time (a kernel may
        be running from the last one). ch-image locks its storage: one pull at a time."""
        if not reference.startswith("docker://"):
            msg = (
                f"Charliecloud pulls docker:// images (ch-image pull), not {reference}: use a "
                "docker:// reference, or Apptainer."
            )
            raise ContainerKernelError(msg)
        ch_image = shutil.which("ch-image") or shutil.which(
            "ch-image", path=os.path.dirname(os.path.realpath(self.executable))
        )
        if not ch_image:
            msg = (
                f"ch-image is not on PATH: Charliecloud needs it to pull {reference} (Debian: "
                "charliecloud-builders), or pull the image elsewhere and name its folder."
            )
            raise ContainerKernelError(msg)
        storage = store.root / "ch-image"
        name = f"ck-{cache_key(reference)}-{time.time_ns():x}"
        # --no-cache: its build cache is a git repository, which fails without a git identity
        argv = [ch_image, "--storage", str(storage), "--no-cache", "pull", *pull_args,
                reference.removeprefix("docker://"), name]  # fmt: skip
        # ch-image runs `env python3`: the one installed beside it (a venv's lacks its modules)
        env = with_user(os.environ)
        env["PATH"] = os.pathsep.join([os.path.dirname(ch_image), env.get("PATH", "")])
        waiting = f"Waiting for another ch-image pull into {storage} (one at a time)."
        with store.lock(STORAGE_LOCK, waiting, progress):
            try:
                run_pull(argv, env, reference, store.root, progress)
            except ContainerKernelError:
                shutil.rmtree(storage / "img" / name, ignore_errors=True)
                raise
        return storage / "img" / name

    @classmethod
    def clean(
        cls, store: Store, named: set[Path], remove: Callable[[Path], int], progress: Progress
    ) -> int:
        """Image folders no record names, the storage locked (a pull under way holds it)."""
        storage = store.root / "ch-image" / "img"
        freed = 0
        if storage.is_dir():
            with store.lock(STORAGE_LOCK, "Waiting for a ch-image pull to end.", progress):
                for path in storage.iterdir():
                    if path not in named:
                        freed += remove(path)
        return freed

    def doctor(self, image: str, gpu: str | None, gpu_setting: str) -> list[Fact]:
        facts = [Fact(True, "no-eval", "values go in from a file, with --env-no-expand")]
        if refusal := gpu_refusal(image, gpu):
            facts.append(Fact(False, "GPUs", refusal))
        else:
            facts.append(Fact(True, "GPUs", f"{gpu_setting} (NVIDIA: an image prepared once "
                              "with `ch-fromhost --nvidia IMAGE`)"))  # fmt: skip
        return facts

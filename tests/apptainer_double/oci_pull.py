"""`apptainer pull` and the URIs of `apptainer exec` (docker://, oras://, library://) as Apptainer
1.4.5 does them, talking the OCI distribution API to a real registry with urllib.

Where each piece comes from (apptainer v1.4.5 unless said otherwise):
  cmd/internal/cli/pull.go           flags, output name, "Image file already exists", transports
  internal/pkg/util/uri/uri.go       GetName: <name>_<tag>.sif
  internal/pkg/client/oci/pull.go    docker://: digest, oci-tmp cache entry, CopyFileAtomic
  internal/pkg/build/oci/oci.go      the cache key: sha256(manifest digest + arch + variant)
  internal/pkg/cache/{cache,entry}.go  $APPTAINER_CACHEDIR/cache/{blob,oci-tmp,oras}, tmp_ entries
  internal/pkg/ociimage/fetch.go     blobs cached in an OCI layout (cache/blob)
  internal/pkg/build/build.go, sources/conveyorPacker_oci.go, sources/base_environment.go,
  assemblers/sif.go, image/packer/squashfs.go   the build: its INFO lines, /.singularity.d, the
                                     SquashFS (mksquashfs -comp gzip), the SIF
  internal/pkg/client/oras/{pull,oras}.go  oras://: the single SIF layer, cache/oras/<digest>
  internal/pkg/util/fs/helper.go     CopyFileAtomic (tmp-copy-N in the destination's folder)
  containers/image v5.33.1 docker/   error texts of the digest step (ping, HEAD, manifest)
  go-containerregistry v0.20.2       error texts of oras:// (transport.Error, ping)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import sif
from sylog import Fatal, go_quote, log

MANIFEST_TYPES = {
    "oci": "application/vnd.oci.image.manifest.v1+json",
    "docker": "application/vnd.docker.distribution.manifest.v2+json",
    "docker-index": "application/vnd.docker.distribution.manifest.list.v2+json",
    "oci-index": "application/vnd.oci.image.index.v1+json",
}
INDEX_TYPES = {MANIFEST_TYPES["docker-index"], MANIFEST_TYPES["oci-index"]}
ACCEPT = ", ".join(
    [
        MANIFEST_TYPES["oci"],
        MANIFEST_TYPES["docker"],
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        MANIFEST_TYPES["docker-index"],
        MANIFEST_TYPES["oci-index"],
    ]
)
SIF_LAYER_TYPES = (
    "application/vnd.sylabs.sif.layer.v1.sif",
    "application/vnd.sylabs.sif.layer.tar",
)
USER_AGENT = "apptainer/1.4.5 (apptainer test double)"
NO_LIBRARY = (
    "remote has no library client "
    "(see https://apptainer.org/docs/user/latest/endpoint.html#no-default-remote)"
)
# docker/distribution errcode: the default message of each code (registryHTTPResponseToError
# shows only the message when it is the default one).
ERRCODE_MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "BLOB_UPLOAD_INVALID": "blob upload invalid",
    "BLOB_UPLOAD_UNKNOWN": "blob upload unknown to registry",
    "DIGEST_INVALID": "provided digest did not match uploaded content",
    "MANIFEST_BLOB_UNKNOWN": "blob unknown to registry",
    "MANIFEST_INVALID": "manifest invalid",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "MANIFEST_UNVERIFIED": "manifest failed signature verification",
    "NAME_INVALID": "invalid repository name",
    "NAME_UNKNOWN": "repository name not known to registry",
    "SIZE_INVALID": "provided length did not match content length",
    "TAG_INVALID": "manifest tag did not match URI",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "UNSUPPORTED": "The operation is unsupported.",
    "TOOMANYREQUESTS": "too many requests",
    "UNKNOWN": "unknown error",
}
HTTP_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                405: "Method Not Allowed", 429: "Too Many Requests",
                500: "Internal Server Error", 502: "Bad Gateway",
                503: "Service Unavailable"}  # fmt: skip
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64", "i686": "386", "armv7l": "arm"}  # fmt: skip


class PullError(Exception):
    """A Go error chain in the making: its text is what follows the FATAL's prefix."""


def getenv_legacy(key: str) -> str:
    """env.GetenvLegacy: APPTAINER_KEY, else SINGULARITY_KEY (with Apptainer's notes)."""
    value, legacy = os.environ.get("APPTAINER_" + key, ""), os.environ.get("SINGULARITY_" + key, "")
    if not value and legacy:
        log(
            "INFO",
            f"Environment variable SINGULARITY_{key} is set, but APPTAINER_{key} is preferred",
        )
        return legacy
    if value and legacy and legacy != value:
        log(
            "WARNING",
            f"SINGULARITY_{key} and APPTAINER_{key} have different values, using the latter",
        )
    return value


def env_bool(key: str) -> bool:
    return getenv_legacy(key).lower() in ("1", "t", "true")


def go_errno(err: OSError) -> str:
    return os.strerror(err.errno).lower() if err.errno else str(err)


def go_value(value) -> str:
    """Go's %v of a decoded JSON value."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "<nil>" if value is None else str(value)


# ---------------------------------------------------------------------------------- references


class Reference:
    """HOST[:PORT]/NAME[:TAG|@DIGEST] normalized like docker/distribution's reference package."""

    def __init__(self, text: str, default_host: str):
        text = text.removeprefix("//")
        if not re.fullmatch(r"[A-Za-z0-9._:/@+-]+", text or "-"):
            raise PullError("invalid reference format")
        name, _, digest = text.partition("@")
        tag = ""
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name.rsplit(":", 1)
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            host, path = first, rest
        else:
            host, path = default_host, name
            if default_host == "docker.io" and "/" not in path:
                path = "library/" + path
        if path != path.lower():
            raise PullError("invalid reference format: repository name must be lowercase")
        if not re.fullmatch(
            r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
            path,
        ):
            raise PullError("invalid reference format")
        if tag and not re.fullmatch(r"\w[\w.-]{0,127}", tag):
            raise PullError("invalid reference format")
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise PullError("invalid reference format")
        self.host, self.path, self.digest = host, path, digest
        self.tag = tag or ("" if digest else "latest")
        self.api_host = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host

    @property
    def name(self) -> str:  # reference.Named.Name()
        return f"{self.host}/{self.path}"

    @property
    def tag_or_digest(self) -> str:
        return self.digest or self.tag

    def __str__(self) -> str:
        return self.name + (f"@{self.digest}" if self.digest else f":{self.tag}")

    def loopback(self) -> bool:
        host = (
            self.api_host.rsplit(":", 1)[0] if not self.api_host.startswith("[") else self.api_host
        )
        return (
            host in ("localhost", "[::1]")
            or host.startswith(("127.", "10.", "192.168."))
            or bool(re.match(r"172\.(1[6-9]|2\d|3[01])\.", host))
        )


def default_name(uri: str) -> str:
    """uri.GetName."""
    transport, _, ref = uri.partition(":")
    ref = ref.lstrip("/")
    container = ref.split("/")[-1]
    if transport in ("http", "https"):
        return container
    tag = "latest"
    if ":" in container:
        container, tag = container.split(":")[:2]
        tag = tag.split(",")[0]
    return f"{container}_{tag}.sif"


# -------------------------------------------------------------------------------------- client


@dataclasses.dataclass
class Response:
    status: int
    headers: object
    body: object  # bytes, or the open response when streamed
    url: str
    method: str


class Client:
    """One registry, as one Go client sees it: a ping (GET /v2/) first, then requests with a
    bearer token when the registry asks for one. STYLE "containers" (containers/image: https,
    then http only with --no-https) or "ggcr" (go-containerregistry: http also tried for
    loopback and private addresses) decides the fallbacks and the error texts."""

    def __init__(self, ref: Reference, no_https: bool, style: str):
        self.ref, self.no_https, self.style = ref, no_https, style
        self.scheme = None
        self.token = None
        self.challenge = None

    def _context(self):
        if self.no_https:  # DockerInsecureSkipTLSVerify
            return ssl._create_unverified_context()
        return ssl.create_default_context()

    def _open(self, method, url, headers=None, stream=False, auth=True):
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, method=method, headers=headers)
        context = self._context() if url.startswith("https:") else None
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), NoRedirectAuthDrop()
        )
        try:
            response = opener.open(request, timeout=60)
        except urllib.error.HTTPError as err:
            body = err.read()
            return Response(err.code, err.headers, body, url, method)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise PullError(self.net_error(method, url, err)) from None
        if stream:
            return Response(response.status, response.headers, response, url, method)
        with response:
            return Response(response.status, response.headers, response.read(), url, method)

    def net_error(self, method, url, err) -> str:
        reason = getattr(err, "reason", err)
        parsed = urllib.parse.urlsplit(url)
        hostport = (
            parsed.netloc
            if parsed.port
            else f"{parsed.netloc}:{443 if parsed.scheme == 'https' else 80}"
        )
        if isinstance(reason, ConnectionRefusedError):
            text = f"dial tcp {hostport}: connect: connection refused"
        elif isinstance(reason, socket.gaierror):
            text = f"dial tcp: lookup {parsed.hostname}: no such host"
        elif isinstance(reason, ssl.SSLCertVerificationError):
            text = "tls: failed to verify certificate: x509: " + (
                "certificate signed by unknown authority"
                if reason.verify_code in (18, 19, 20, 21)
                else str(reason.verify_message)
            )
        elif isinstance(reason, ssl.SSLError):
            text = (
                "http: server gave HTTP response to HTTPS client"
                if "WRONG_VERSION_NUMBER" in str(reason) or "record layer" in str(reason)
                else f"remote error: tls: {reason.reason or reason}".lower()
            )
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            text = f"dial tcp {hostport}: i/o timeout"
        elif isinstance(reason, OSError) and reason.errno:
            text = f"dial tcp {hostport}: connect: {go_errno(reason)}"
        else:
            text = str(reason)
        return f'{method.capitalize()} "{url}": {text}'

    def ping(self):
        if self.scheme:
            return
        schemes = ["https"]
        if self.no_https or (self.style == "ggcr" and self.ref.loopback()):
            schemes.append("http")
        errors = []
        for scheme in schemes:
            try:
                response = self._open("GET", f"{scheme}://{self.ref.api_host}/v2/", auth=False)
            except PullError as err:
                errors.append(str(err))
                continue
            if response.status not in (200, 401):
                errors.append(self.status_error(response))
                continue
            self.scheme = scheme
            self.challenge = response.headers.get("WWW-Authenticate", "")
            return
        if self.style == "ggcr":
            raise PullError("; ".join(errors))
        raise PullError(f"pinging container registry {self.ref.api_host}: {errors[-1]}")

    def _authenticate(self):
        """A bearer token for pulling (no credentials: anonymous), as the challenge asks."""
        match = re.match(r"\s*Bearer\s+(.*)", self.challenge or "", re.IGNORECASE)
        if not match:
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if "realm" not in params:
            return False
        query = {"scope": f"repository:{self.ref.path}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        url = (
            params["realm"]
            + ("&" if "?" in params["realm"] else "?")
            + urllib.parse.urlencode(query)
        )
        response = self._open("GET", url, auth=False)
        if response.status != 200:
            raise PullError(self.status_error(response))
        data = json.loads(response.body or b"{}")
        self.token = data.get("token") or data.get("access_token")
        return bool(self.token)

    def request(self, method, path, headers=None, stream=False):
        self.ping()
        url = f"{self.scheme}://{self.ref.api_host}/v2/{self.ref.path}/{path}"
        if not self.token and self.challenge and self.challenge.lower().startswith("bearer"):
            self._authenticate()
        return self._open(method, url, headers, stream=stream)

    def status_error(self, response) -> str:
        """The text of an error status, as containers/image or go-containerregistry words it."""
        try:
            errors = json.loads(response.body or b"null")["errors"]
        except (ValueError, KeyError, TypeError):
            errors = None
        if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
            errors = None
        if self.style == "ggcr":
            return f"{response.method} {response.url}: {ggcr_status_error(response, errors)}"
        return containers_status_error(response, errors)


def ggcr_status_error(response, errors) -> str:
    """go-containerregistry's transport.Error (without its METHOD URL prefix)."""
    if errors:
        texts = [
            f"{e.get('code')}: {e.get('message')}"
            + (f"; {go_value(e['detail'])}" if e.get("detail") is not None else "")
            for e in errors
        ]
        return texts[0] if len(texts) == 1 else "multiple errors returned: " + "; ".join(texts)
    status = f"unexpected status code {response.status} {HTTP_REASONS.get(response.status, '')}"
    if response.body:
        return f"{status}: {response.body.decode(errors='replace')}"
    if response.method == "HEAD":
        return status + " (HEAD responses have no body, use GET for details)"
    return status


def containers_status_error(response, errors) -> str:
    """containers/image's registryHTTPResponseToError over docker/distribution's errcode."""
    if not errors:
        body = response.body.decode(errors="replace")
        body = body[:50] + "..." if len(body) > 50 else body
        return f"StatusCode: {response.status}, {go_quote(body)}"
    first = errors[0]
    code = first.get("code", "UNKNOWN")
    code = code if code in ERRCODE_MESSAGES else "UNKNOWN"
    code_text, default = code.lower().replace("_", " "), ERRCODE_MESSAGES[code]
    message = first.get("message") or ""
    if message in ("", default) and first.get("detail") is None:
        return code_text  # an errcode.ErrorCode: its own text
    return message if message == default else f"{code_text}: {message}"


class NoRedirectAuthDrop(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob downloads may go to storage elsewhere) without our token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0917
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if (
            new is not None
            and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc
        ):
            new.remove_header("Authorization")
        return new


# ------------------------------------------------------------------------------------- caching


class Cache:
    """internal/pkg/cache: $APPTAINER_CACHEDIR/cache (default $HOME/.apptainer/cache)."""

    def __init__(self, disable: bool):
        self.root = None
        if env_bool("DISABLE_CACHE") or disable:
            return
        parent = getenv_legacy("CACHEDIR") or config_dir()
        existing = parent
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK):
            log("WARNING", f"Cache disabled - cache location {existing} is not writable.")
            return
        self.root = os.path.join(parent, "cache")
        for kind in ("", "library", "oci-tmp", "shub", "oras", "net"):
            path = os.path.join(self.root, kind)
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
            elif stat.S_IMODE(os.stat(path).st_mode) != 0o700:
                os.chmod(path, 0o700)

    @property
    def disabled(self) -> bool:
        return self.root is None

    def entry(self, kind: str, key: str) -> str:
        path = os.path.join(self.root, kind, key)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        return path

    def tmp_entry(self, kind: str) -> str:
        handle, path = tempfile.mkstemp(prefix="tmp_", dir=os.path.join(self.root, kind))
        os.fchmod(handle, 0o700)
        os.close(handle)
        return path


def config_dir() -> str:
    return getenv_legacy("CONFIGDIR") or os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".apptainer"
    )


def tmp_dir(requested: str | None = None) -> str:
    return requested or getenv_legacy("TMPDIR") or tempfile.gettempdir()


class Cleanup:
    """Paths to remove when done, also on SIGINT/SIGTERM once a build runs (build.Full's
    handler: clean up, exit 1; it stays, so a signal during the final copy also exits 1,
    leaving that copy's tmp-copy-N, as 1.4.5 does). A running mksquashfs is killed too."""

    def __init__(self):
        self.paths = []
        self.children = []
        self.previous = {}

    def add(self, path):
        self.paths.append(path)
        return path

    def discard(self, path):
        with contextlib.suppress(ValueError):
            self.paths.remove(path)

    def run(self):
        for path in reversed(self.paths):
            remove_tree(path)
        self.paths.clear()

    def __enter__(self):
        return self

    def catch_signals(self):
        def handler(_sig, _frame):
            for child in self.children:
                child.kill()
                child.wait()
            self.run()
            os._exit(1)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous.setdefault(sig, signal.signal(sig, handler))

    def __exit__(self, *_exc):
        self.run()
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


def remove_tree(path):
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, _files in os.walk(path):  # FixPerms: what we cannot enter, we cannot empty
            for name in dirs:
                with contextlib.suppress(OSError):
                    full = os.path.join(root, name)
                    if not os.path.islink(full):
                        os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o700)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def write_file_atomically(source_path: str, destination: str) -> None:
    """fs.CopyFileAtomic(src, dst, 0o777): tmp-copy-N beside DESTINATION, then a rename."""
    umask = os.umask(0)
    os.umask(umask)
    folder = os.path.dirname(destination) or "."
    for _ in range(100):
        temporary = os.path.join(folder, f"tmp-copy-{random.randrange(1 << 32)}")
        try:
            handle = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise PullError(
                "could not open temporary file for copy: failed to create temporary file: "
                f"open {temporary}: {go_errno(err)}"
            ) from None
    try:
        os.fchmod(handle, 0o777 & ~umask)
        with open(source_path, "rb") as source:
            while chunk := source.read(sif.CHUNK):
                try:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(handle, view) :]
                except OSError as err:
                    raise PullError(
                        f"could not copy file: write {temporary}: {go_errno(err)}"
                    ) from None
        os.close(handle)
        handle = None
        try:
            os.rename(temporary, destination)
        except OSError as err:
            raise PullError(
                f"could not rename temporary file in copy: rename {temporary} {destination}: "
                f"{go_errno(err)}"
            ) from None
    finally:
        if handle is not None:
            os.close(handle)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# ---------------------------------------------------------------------------------- docker://


def host_platform() -> tuple[str, str]:
    return GOARCH.get(platform.machine(), platform.machine()), ""


def docker_digest(ref: Reference, no_https: bool) -> str:
    """oci.ImageDigest via containers/image: a HEAD for Docker-Content-Digest, else the GET'd
    manifest's sha256; the cache key adds the architecture and variant."""
    client = Client(ref, no_https, "containers")
    digest = None
    try:
        head = client.request("HEAD", f"manifests/{ref.tag_or_digest}", {"Accept": ACCEPT})
        if head.status == 200:
            digest = head.headers.get("Docker-Content-Digest", "")
            digest = digest.split(":", 1)[1] if digest.startswith("sha256:") else None
    except PullError:
        pass  # "Falling back to GetManifest digest"
    if digest is None:
        response = client.request("GET", f"manifests/{ref.tag_or_digest}", {"Accept": ACCEPT})
        if response.status != 200:
            error = client.status_error(response)
            raise PullError(f"reading manifest {ref.tag_or_digest} in {ref.name}: {error}")
        digest = hashlib.sha256(response.body).hexdigest()
    arch, variant = host_platform()
    return hashlib.sha256((digest + arch + variant).encode()).hexdigest()


class Image:
    """An image's manifest, config and layers, fetched with go-containerregistry's ways."""

    def __init__(self, ref: Reference, no_https: bool):
        self.ref = ref
        self.client = Client(ref, no_https, "ggcr")
        self.manifest_bytes, self.media_type = self._manifest(ref.tag_or_digest)
        manifest = json.loads(self.manifest_bytes)
        if self.media_type in INDEX_TYPES or "manifests" in manifest:
            arch, variant = host_platform()
            for child in manifest.get("manifests", []):
                plat = child.get("platform") or {"os": "linux", "architecture": "amd64"}
                if (plat.get("os"), plat.get("architecture")) == ("linux", arch) and (
                    not variant or plat.get("variant", "") == variant
                ):
                    self.manifest_bytes, self.media_type = self._manifest(child["digest"])
                    break
            else:
                raise PullError(f"no child with platform linux/{arch} in index {ref}")
        self.manifest = json.loads(self.manifest_bytes)
        if "layers" not in self.manifest:
            raise PullError(f"unsupported MediaType: {go_quote(self.media_type)}")
        self.digest = "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    def _manifest(self, tag_or_digest):
        response = self.client.request("GET", f"manifests/{tag_or_digest}", {"Accept": ACCEPT})
        if response.status != 200:
            raise PullError(self.client.status_error(response))
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        if tag_or_digest.startswith("sha256:"):
            verify(response.body, tag_or_digest)
        return response.body, media_type

    def blob(self, digest: str, destination: str) -> None:
        download_blob(self.client, digest, destination)


def download_blob(client: Client, digest: str, destination: str) -> None:
    """Download the blob DIGEST to DESTINATION (a temporary name, then a rename), checked."""
    response = client.request("GET", f"blobs/{digest}", stream=True)
    if response.status != 200:
        raise PullError(client.status_error(response))
    handle, partial = tempfile.mkstemp(  # (another pull may fetch the same blob meanwhile)
        prefix=os.path.basename(destination) + ".", dir=os.path.dirname(destination)
    )
    hasher, size = hashlib.sha256(), 0
    try:
        with response.body as stream, os.fdopen(handle, "wb") as out:
            while chunk := stream.read(sif.CHUNK):
                hasher.update(chunk)
                size += len(chunk)
                out.write(chunk)
        got = "sha256:" + hasher.hexdigest()
        if got != digest:
            raise PullError(
                f"error verifying sha256 checksum after reading {size} bytes; "
                f"got {go_quote(got)}, want {go_quote(digest)}"
            )
        os.rename(partial, destination)
    except OSError as err:
        raise PullError(f"write {partial}: {go_errno(err)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def verify(data: bytes, digest: str) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise PullError(
            f"manifest digest: {go_quote(got)} does not match requested digest {go_quote(digest)}"
        )


def fetch_to_layout(image: Image, layout: str) -> list[str]:
    """ociimage.FetchToLayout: the config and layers as blobs of an OCI layout (the cache's
    blob/, or a temporary one), downloading only the missing ones; returns the layers' paths."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    oci_layout = os.path.join(layout, "oci-layout")
    if not os.path.exists(oci_layout):
        with open(oci_layout, "w") as out:
            json.dump({"imageLayoutVersion": "1.0.0"}, out)
    paths = []
    for descriptor in [image.manifest["config"], *image.manifest["layers"]]:
        digest = descriptor["digest"]
        path = os.path.join(blobs, digest.split(":", 1)[1])
        if not (os.path.exists(path) and os.path.getsize(path) == descriptor.get("size", -1)):
            image.blob(digest, path)
        paths.append(path)
    manifest_path = os.path.join(blobs, image.digest.split(":", 1)[1])
    with open(manifest_path, "wb") as out:
        out.write(image.manifest_bytes)
    index_path = os.path.join(layout, "index.json")
    try:
        with open(index_path) as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        index = {"schemaVersion": 2, "mediaType": MANIFEST_TYPES["oci-index"], "manifests": []}
    index["manifests"].append(
        {"mediaType": image.media_type, "size": len(image.manifest_bytes), "digest": image.digest}
    )
    handle, partial = tempfile.mkstemp(prefix="index.json.", dir=layout)
    with os.fdopen(handle, "w") as out:
        json.dump(index, out)
    os.chmod(partial, 0o644)
    os.rename(partial, index_path)
    return paths


# ------------------------------------------------------------------------------- layers → rootfs


def resolve_inside(root: str, path: str, depth: int = 0) -> str:
    """PATH (relative to the image's /) with the image's symlinks followed inside ROOT."""
    out = "/"
    parts = [p for p in path.split("/") if p and p != "."]
    for n, part in enumerate(parts):
        if part == "..":
            out = os.path.dirname(out)
            continue
        candidate = os.path.join(out, part)
        full = root + candidate
        if depth < 40 and os.path.islink(full):
            target = os.readlink(full)
            target = target if target.startswith("/") else os.path.join(out, target)
            rest = "/".join(parts[n + 1 :])
            return resolve_inside(root, os.path.normpath(os.path.join(target, rest)), depth + 1)
        out = candidate
    return out


def open_layer(path: str):
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\x28\xb5\x2f\xfd":
        if not shutil.which("zstd"):
            raise PullError(
                "zstd-compressed layers need the zstd command (not emulated without it)"
            )
        proc = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE)
        return proc.stdout
    return open(path, "rb")


def apply_layer(path: str, root: str, rootless: bool) -> None:
    """umoci's UnpackLayer: the layer's entries over ROOT, whiteouts (.wh.NAME) and opaque
    directories (.wh..wh..opq) removing what lower layers put there."""
    created, dir_modes = set(), []
    with open_layer(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = os.path.normpath("/" + member.name).lstrip("/")
            if name in ("", "."):
                continue
            parent, base = os.path.split("/" + name)
            inner_parent = resolve_inside(root, parent)
            host_parent = root + inner_parent if inner_parent != "/" else root
            if base == ".wh..wh..opq":
                with contextlib.suppress(FileNotFoundError):
                    for entry in os.listdir(host_parent):
                        if os.path.join(inner_parent, entry) not in created:
                            remove_tree(os.path.join(host_parent, entry))
                continue
            if base.startswith(".wh."):
                inner = os.path.join(inner_parent, base[4:])
                if inner not in created:
                    remove_tree(root + inner)
                continue
            os.makedirs(host_parent, exist_ok=True)
            inner = os.path.join(inner_parent, base)
            target = root + inner
            extract_member(tar, member, target, root=root, rootless=rootless, dir_modes=dir_modes)
            created.add(inner)
    for target, mode, mtime in reversed(dir_modes):
        os.chmod(target, mode | (0o700 if rootless else 0))
        os.utime(target, (mtime, mtime))


def extract_member(tar, member, target, *, root, rootless, dir_modes):
    if os.path.lexists(target) and not (
        member.isdir() and os.path.isdir(target) and not os.path.islink(target)
    ):
        remove_tree(target)
    mode = stat.S_IMODE(member.mode)
    if member.isdir():
        if not os.path.isdir(target):
            os.mkdir(target, 0o700)
        else:
            os.chmod(target, stat.S_IMODE(os.stat(target).st_mode) | 0o700)
        dir_modes.append((target, mode, member.mtime))
    elif member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        linked = os.path.normpath("/" + member.linkname)
        parent = resolve_inside(root, os.path.dirname(linked))
        os.link(
            os.path.join(root + parent, os.path.basename(linked)), target, follow_symlinks=False
        )
        return
    elif member.isfile():
        source = tar.extractfile(member)
        with open(target, "wb") as out:
            shutil.copyfileobj(source, out, sif.CHUNK)
    elif member.isfifo():
        os.mkfifo(target)
    elif member.ischr() or member.isblk():
        if rootless:
            return  # umoci's rootless mode skips device nodes
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(target, kind | mode, os.makedev(member.devmajor, member.devminor))
    else:
        return
    if not rootless:
        os.lchown(target, member.uid, member.gid)
    if not member.issym():
        if not member.isdir():
            os.chmod(target, mode | (0o600 if rootless else 0))
        os.utime(target, (member.mtime, member.mtime))
    else:
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


# ------------------------------------------------------------------- /.singularity.d (the build)

ENV_SCRIPTS = {
    "01-base.sh": "#!/bin/sh\n# \n",
    "90-environment.sh": "#!/bin/sh\n# Custom environment shell code should follow\n\n",
    "95-apps.sh": """#!/bin/sh
if test -n "${SINGULARITY_APPNAME:-}"; then
    # (the SCIF apps of Apptainer's 95-apps.sh: not emulated)
    echo "Could not locate the container application: ${SINGULARITY_APPNAME}"
    exit 1
fi
""",
    "99-base.sh": """#!/bin/sh
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi

if [ -z "${PS1:-}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
""",
    "99-runtimevars.sh": """#!/bin/sh
if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
    PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"
fi

if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
    PATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"
fi

if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
    PATH="${SING_USER_DEFINED_PATH}"
fi

unset SING_USER_DEFINED_PREPEND_PATH \\
      SING_USER_DEFINED_APPEND_PATH \\
      SING_USER_DEFINED_PATH

export PATH
""",
}
EXEC_ACTION = """#!/bin/sh
for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done

exec "$@"
"""
OTHER_ACTION = (
    "#!/bin/sh\n# (this action of Apptainer's is not emulated by the test double)\nexit 1\n"
)
VARIABLE = re.compile(r"^[a-zA-Z_]{1,}[a-zA-Z0-9_]{0,}$")


def shell_escape(text: str) -> str:
    """internal/pkg/util/shell.Escape."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")


def shell_args_quoted(args) -> str:
    return " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)


def insert_base_env(root: str, config: dict, deffile: bytes, arch: str) -> None:
    """makeBaseEnv(rootfs, overwrite=true), insertRunScript, insertEnv, insertOCILabels and the
    definition/labels metadata of an OCI build."""
    sd = os.path.join(root, ".singularity.d")
    for folder in ("libs", "actions", "env"):
        os.makedirs(os.path.join(sd, folder), 0o755, exist_ok=True)
    for folder in ("dev", "proc", "root", "var/tmp", "tmp", "etc", "sys", "home"):
        os.makedirs(os.path.join(root, folder), 0o755, exist_ok=True)
    links = {
        "singularity": ".singularity.d/runscript",
        ".run": ".singularity.d/actions/run",
        ".exec": ".singularity.d/actions/exec",
        ".test": ".singularity.d/actions/test",
        ".shell": ".singularity.d/actions/shell",
        "environment": ".singularity.d/env/90-environment.sh",
    }
    for name, target in links.items():
        if not os.path.exists(os.path.join(root, name)):
            with contextlib.suppress(FileExistsError):
                os.symlink(target, os.path.join(root, name))
    files = {
        "etc/hosts": ("", 0o644),
        "etc/resolv.conf": ("", 0o644),
        ".singularity.d/actions/exec": (EXEC_ACTION, 0o755),
        **{
            f".singularity.d/actions/{a}": (OTHER_ACTION, 0o755)
            for a in ("run", "shell", "start", "test")
        },
        **{f".singularity.d/env/{n}": (text, 0o755) for n, text in ENV_SCRIPTS.items()},
        ".singularity.d/startscript": ("#!/bin/sh\n", 0o755),
    }
    image_config = config.get("config") or {}
    entrypoint, cmd = image_config.get("Entrypoint") or [], image_config.get("Cmd") or []
    oci_entrypoint = go_single(shell_args_quoted(entrypoint)) if entrypoint else "''"
    oci_cmd = go_single(shell_args_quoted(cmd)) if cmd else "''"
    files[".singularity.d/runscript"] = (
        f"#!/bin/sh\nOCI_ENTRYPOINT={oci_entrypoint}\nOCI_CMD={oci_cmd}\n"
        "# (the rest of Apptainer's OCI runscript is not emulated: `run` is not)\n",
        0o755,
    )
    exports = ["#!/bin/sh\n"]
    for element in image_config.get("Env") or []:
        key, eq, value = element.partition("=")
        if not VARIABLE.match(key):
            continue
        if not eq:
            exports.append(f'export {key}="${{{key}:-}}"\n')
        elif key == "PATH":
            exports.append(f"export {key}={go_quote(shell_escape(value))}\n")
        else:
            exports.append(f'export {key}="${{{key}:-{go_quote(shell_escape(value))}}}"\n')
    files[".singularity.d/env/10-docker2singularity.sh"] = ("".join(exports), 0o755)
    labels = dict(image_config.get("Labels") or {})
    labels.update(
        {
            "org.label-schema.build-arch": arch,
            "org.label-schema.build-date": time.strftime("%A_%-d_%B_%Y_%-H:%M:%S_%Z"),
            "org.label-schema.schema-version": "1.0",
            "org.label-schema.usage.apptainer.version": "1.4.5",
            "org.label-schema.usage.singularity.deffile.bootstrap": "docker",
            "org.label-schema.usage.singularity.deffile.from": deffile.decode()
            .split("from: ")[-1]
            .strip(),
        }
    )
    files[".singularity.d/labels.json"] = (json.dumps(labels, indent="\t", sort_keys=True), 0o644)
    files[".singularity.d/Singularity"] = (deffile.decode(), 0o644)
    for name, (text, mode) in files.items():
        path = root + resolve_inside(root, name)  # (makeFile writes through symlinks)
        with open(path, "w") as out:
            out.write(text)
        os.chmod(path, mode)


def go_single(text: str) -> str:
    """'...' with shell.EscapeSingleQuotes (as insertRunScript writes OCI_ENTRYPOINT/OCI_CMD)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def mksquashfs(root: str, destination: str, cleanup: Cleanup) -> None:
    """packer.Squashfs.Create with the SIF assembler's flags."""
    path = shutil.which("mksquashfs")
    if not path:
        raise PullError("while creating squashfs: could not create squashfs, mksquashfs not found")
    flags = ["-noappend"] + (["-all-root"] if os.getuid() != 0 else []) + ["-comp", "gzip"]
    version = subprocess.run([path, "-version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"mksquashfs version (\d+)\.(\d+)", version)
    percentage = bool(match) and (int(match.group(1)), int(match.group(2))) >= (4, 6)
    if percentage:
        flags += ["-quiet", "-percentage"]
    else:
        log("INFO", "To see mksquashfs output with progress bar enable verbose logging")
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [path, root, destination, *flags], stdout=subprocess.DEVNULL, stderr=errors
        )
        cleanup.children.append(proc)  # (a signal now kills it too)
        code = proc.wait()
        cleanup.children.remove(proc)
        errors.seek(0)
        if code:
            raise PullError(
                f"while creating squashfs: {path} command failed: exit status {code}: "
                f"{errors.read()}"
            )


def warn_nodev(folder: str) -> None:
    """newBuild: a warning when $TMPDIR's file system is mounted nodev."""
    best, options = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            inside = folder == point or folder.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, options = point, fields[5]
    if "nodev" in options.split(","):
        note = "it could be a source of failure during build process"
        log("WARNING", f"'nodev' mount option set on {best}, {note}")


@dataclasses.dataclass
class Job:
    """What a pull works with: the cache, --no-https, the temporary folder, the cleanup."""

    cache: Cache
    no_https: bool
    temp: str
    cleanup: Cleanup


def build_sif(uri: str, ref: Reference, dest: str, job: Job) -> None:
    """build.Full of a docker:// source into a SIF at DEST (convertOciToSIF)."""
    log("INFO", "Starting build...")
    temp, cleanup, cache = os.path.realpath(job.temp), job.cleanup, job.cache
    cleanup.catch_signals()
    warn_nodev(temp)
    parent = cleanup.add(tempfile.mkdtemp(prefix="build-temp-", dir=temp))
    root = os.path.join(parent, "rootfs")
    os.mkdir(root, 0o755)
    log("INFO", "Fetching OCI image...")
    try:
        image = Image(ref, job.no_https)
        layout = (
            os.path.join(cache.root, "blob")
            if not cache.disabled
            else cleanup.add(tempfile.mkdtemp(prefix="layout-", dir=temp))
        )
        paths = fetch_to_layout(image, layout)
        with open(paths[0], "rb") as handle:
            config = json.load(handle)
    except (PullError, OSError, ValueError) as err:
        raise PullError(f"conveyor failed to get: {err}") from None
    log("INFO", "Extracting OCI image...")
    try:
        for path in paths[1:]:
            apply_layer(path, root, rootless=os.getuid() != 0)
    except (OSError, tarfile.TarError, EOFError, PullError) as err:
        raise PullError(f"packer failed to pack: while unpacking rootfs: {err}") from None
    log("INFO", "Inserting Apptainer configuration...")
    arch = config.get("architecture") or host_platform()[0]
    deffile = f"bootstrap: docker\nfrom: {uri.split('://', 1)[1]}\n\n".encode()
    try:
        insert_base_env(root, config, deffile, arch)
    except OSError as err:
        raise PullError(
            "packer failed to pack: while inserting base environment: build: failed to make "
            f"environment files: open {err.filename}: {go_errno(err)}"
        ) from None
    log("INFO", "Creating SIF file...")
    handle, squashfs = tempfile.mkstemp(prefix="squashfs-", dir=temp)
    os.close(handle)
    cleanup.add(squashfs)
    mksquashfs(root, squashfs, cleanup)
    oci_config = json.dumps(config.get("config") or {}, separators=(",", ":")).encode()
    remove_tree(dest)  # "remove anything that may exist at the build destination at last moment"
    try:
        with open(squashfs, "rb") as data:
            create_sif(dest, deffile, {"oci-config.json": oci_config}, data, arch)
    except OSError as err:
        text = getattr(err, "strerror_go", None) or f"{err.filename}: {go_errno(err)}"
        raise PullError(f"while creating SIF: while creating container: {text}") from None
    remove_tree(parent)
    cleanup.discard(parent)


def create_sif(dest, deffile, json_objects, data, arch):
    """sif.CreateContainerAtPath: O_TRUNC, mode 0755; on failure the file is removed."""
    try:
        handle = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o755)
    except OSError as err:
        err.strerror_go = f"open {dest}: {go_errno(err)}"
        raise
    try:
        with os.fdopen(handle, "wb") as out:
            sif.write(out, deffile, json_objects, data, arch)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        err.strerror_go = f"write {dest}: {go_errno(err)}"
        raise


def pull_docker(uri: str, job: Job, direct_to: str | None) -> str:
    """oci.pull: the image as a SIF in the cache (or at DIRECT_TO when the cache is off)."""
    try:
        ref = Reference(uri.split(":", 1)[1], "docker.io")
    except PullError as err:
        raise PullError(
            f"failed to get checksum for {uri}: unable to parse image name {uri}: {err}"
        ) from None
    try:
        key = docker_digest(ref, job.no_https)
    except PullError as err:
        raise PullError(f"failed to get checksum for {uri}: {err}") from None
    if direct_to:
        log("INFO", "Converting OCI blobs to SIF format")
        try:
            build_sif(uri, ref, direct_to, job)
        except PullError as err:
            raise PullError(f"while building SIF from layers: {err}") from None
        return direct_to
    path = job.cache.entry("oci-tmp", key)
    if os.path.isfile(path):
        log("INFO", "Using cached SIF image")
        return path
    tmp = job.cleanup.add(job.cache.tmp_entry("oci-tmp"))
    log("INFO", "Converting OCI blobs to SIF format")
    try:
        build_sif(uri, ref, tmp, job)
    except PullError as err:
        raise PullError(f"while building SIF from layers: {err}") from None
    try:
        os.rename(tmp, path)
    except OSError as err:
        raise PullError(
            f"could not finalize cached file: rename {tmp} {path}: {go_errno(err)}"
        ) from None
    job.cleanup.discard(tmp)
    return path


# ------------------------------------------------------------------------------------ oras://


def oras_manifest(ref: Reference, client: Client) -> dict:
    response = client.request("GET", f"manifests/{ref.tag_or_digest}", {"Accept": ACCEPT})
    if response.status != 200:
        raise PullError(client.status_error(response))
    manifest = json.loads(response.body)
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise PullError(f"ORAS SIF image should have a single layer, found {len(layers)}")
    if layers[0].get("mediaType") not in SIF_LAYER_TYPES:
        raise PullError(f"invalid layer mediatype: {layers[0].get('mediaType')}")
    return layers[0]


def oras_download(ref: Reference, no_https: bool, path: str, temp: str) -> None:
    """oras.DownloadImage: the SIF layer into a temporary OCI layout, then copied to PATH."""
    client = Client(ref, no_https, "ggcr")
    layer = oras_manifest(ref, client)
    folder = tempfile.mkdtemp(prefix="oras-tmp-", dir=temp)
    try:
        blob = os.path.join(folder, "blob")
        download_blob(client, layer["digest"], blob)
        try:
            shutil.copyfile(blob, path)
        except OSError as err:
            raise PullError(f"write {path}: {go_errno(err)}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not sif.is_sif(path):
        remove_tree(path)
        raise PullError(f"{go_quote(path)} is not a SIF")


def pull_oras(uri: str, job: Job, direct_to: str | None) -> str:
    """oras.pull: the SIF in the cache (cache/oras/<layer digest>), or at DIRECT_TO."""
    try:
        ref = Reference(uri.split(":", 1)[1], "index.docker.io")
        layer = oras_manifest(ref, Client(ref, job.no_https, "ggcr"))
    except PullError as err:
        raise PullError(f"failed to get checksum for {uri}: {err}") from None
    digest = layer["digest"]
    if direct_to:
        log("INFO", "Downloading oras image")
        try:
            oras_download(ref, job.no_https, direct_to, job.temp)
        except PullError as err:
            raise PullError(f"unable to Download Image: {err}") from None
        return direct_to
    path = job.cache.entry("oras", digest)
    if os.path.isfile(path):
        log("INFO", "Using cached SIF image")
        return path
    tmp = job.cleanup.add(job.cache.tmp_entry("oras"))
    log("INFO", "Downloading oras image")
    try:
        oras_download(ref, job.no_https, tmp, job.temp)
    except PullError as err:
        raise PullError(f"unable to Download Image: {err}") from None
    hasher = hashlib.sha256()
    with open(tmp, "rb") as handle:
        while chunk := handle.read(sif.CHUNK):
            hasher.update(chunk)
    got = "sha256:" + hasher.hexdigest()
    if got != digest:
        raise PullError(f"cached file hash({got}) and expected hash({digest}) does not match")
    os.rename(tmp, path)
    job.cleanup.discard(tmp)
    return path


# ----------------------------------------------------------------------------------- commands

PULL_BOOL = {"force", "disable-cache", "no-https"}
PULL_VALUE = {"dir", "name", "tmpdir"}
PULL_SHORT = {"F": "force"}


def flag_error(command: str, flags, message: str) -> None:
    sys.stderr.write(
        f'Error for command "{command}": {message}\n\nOptions for {command} command:\n\n'
        + "".join(f"      --{f}\n" for f in sorted(flags))
        + "\nRun 'apptainer --help' for more detailed usage information.\n"
    )
    sys.exit(1)


def parse_pull_args(args):
    opts = {f: False for f in PULL_BOOL}
    opts.update({f: None for f in PULL_VALUE})
    positional, i = [], 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg == "--":
            positional += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in PULL_BOOL | PULL_VALUE:
                flag_error("pull", PULL_BOOL | PULL_VALUE, f"unknown flag: --{name}")
        else:
            name, value = PULL_SHORT.get(arg[1]), arg[2:].lstrip("=")
            eq = "=" if value else ""
            if name is None:
                flag_error(
                    "pull", PULL_BOOL | PULL_VALUE, f"unknown shorthand flag: '{arg[1]}' in {arg}"
                )
        if name in PULL_BOOL:
            opts[name] = value.lower() not in ("false", "0", "f") if eq else True
            continue
        if not eq:
            if i >= len(args):
                flag_error("pull", PULL_BOOL | PULL_VALUE, f"flag needs an argument: --{name}")
            value, i = args[i], i + 1
        opts[name] = value
    if not 1 <= len(positional) <= 2:
        flag_error(
            "pull",
            PULL_BOOL | PULL_VALUE,
            f"accepts between 1 and 2 arg(s), received {len(positional)}",
        )
    opts["no-https"] = opts["no-https"] or env_bool("NOHTTPS") or env_bool("NO_HTTPS")
    opts["dir"] = opts["dir"] or getenv_legacy("PULLDIR") or getenv_legacy("PULLFOLDER") or None
    return opts, positional


def split_uri(uri: str) -> tuple[str, str]:
    """uri.Split."""
    transport, colon, ref = uri.partition(":")
    if not colon:
        return "", uri
    if ref.startswith("//") or transport in (
        "library", "shub", "docker", "docker-archive", "docker-daemon", "oci", "oci-archive",
        "http", "https", "oras",
    ):  # fmt: skip
        return transport, ref
    return "", uri


def pull(args) -> int:
    opts, positional = parse_pull_args(args)
    cache = Cache(opts["disable-cache"])
    source = positional[-1]
    transport, ref = split_uri(source)
    if not ref:
        raise Fatal(f"Bad URI {source}")
    pull_to = opts["name"] or positional[0]
    if not opts["name"] and len(positional) == 1:
        if not transport:
            raise Fatal("No transport type URI supplied")
        pull_to = default_name(source)
    if opts["dir"]:
        pull_to = os.path.join(opts["dir"], pull_to)
    try:
        os.stat(pull_to)
        exists = True
    except FileNotFoundError:
        exists = False
    except OSError:
        exists = True
    if exists and not opts["force"]:
        raise Fatal(f"Image file already exists: {go_quote(pull_to)} - will not overwrite")
    temp = tmp_dir(opts["tmpdir"])
    if transport == "library":
        raise Fatal(f"Unable to get library client configuration: {NO_LIBRARY}")
    if transport in ("docker", "oras"):
        what = (
            "While making image from oci registry"
            if transport == "docker"
            else "While pulling image from oci registry"
        )
        puller = pull_docker if transport == "docker" else pull_oras
        direct_to = pull_to if cache.disabled else None
        with Cleanup() as cleanup:
            try:
                job = Job(cache, opts["no-https"], temp, cleanup)
                src = puller(source, job, direct_to)
            except PullError as err:
                raise Fatal(f"{what}: error fetching image to cache: {err}") from None
            if direct_to is None:
                try:
                    write_file_atomically(src, pull_to)
                except PullError as err:
                    raise Fatal(f"{what}: error copying image out of cache: {err}") from None
        return 0
    if transport in (
        "shub",
        "http",
        "https",
        "docker-archive",
        "docker-daemon",
        "oci",
        "oci-archive",
    ):
        sys.stderr.write(f"apptainer test double: pull from {transport}: is not emulated\n")
        return 1
    if not transport:
        raise Fatal("No transport type URI supplied")
    raise Fatal(f"Unsupported transport type: {transport}")


def image_for_uri(uri: str, no_https: bool, temp: str | None = None) -> str | None:
    """replaceURIWithImage for `exec URI`: the cached SIF to run (the registry is asked for the
    manifest's digest every time); None when URI is no URI."""
    transport, _ = split_uri(uri)
    if transport in ("", "instance"):
        return None
    if transport not in ("docker", "oras", "library"):
        raise Fatal(f"Unsupported transport type: {transport}")
    cache = Cache(False)
    if transport == "library":
        raise Fatal(f"Unable to handle {uri} uri: {NO_LIBRARY}")
    if cache.disabled:
        raise Fatal(
            f"apptainer test double: exec {uri} needs the image cache (not emulated without)"
        )
    puller = pull_docker if transport == "docker" else pull_oras
    with Cleanup() as cleanup:
        try:
            return puller(uri, Job(cache, no_https, tmp_dir(temp), cleanup), None)
        except PullError as err:
            raise Fatal(f"Unable to handle {uri} uri: {err}") from None

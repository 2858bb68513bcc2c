"""The Docker toolchain: compiler commands run inside a target's toolchain image.

A toolchain image is built from ``targets/toolchains/<name>.Dockerfile`` and tagged
``minrt-toolchain-<name>:<hash>``, the hash covering the Dockerfile and its base image name,
so editing a Dockerfile rebuilds that image and nothing else. Images are built lazily, once,
by the Docker Engine API (classic builder, never pulling, network of the host so apt reaches
its mirror). Each command then runs in a fresh container with no network, as the calling
uid:gid, with the source tree and the cache bind-mounted at the same paths as on the host:
a command line and the paths it names mean the same thing inside and outside.

No image registry is contacted: when the Dockerfiles' default base (``debian:bookworm-slim``)
is present locally (e.g. `docker pull`-ed by a user who has a registry) it is used; otherwise
the base is bootstrapped offline from a Debian mirror with debootstrap and imported
(`bootstrap_base_image`). Images of other Dockerfile versions are left in the engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness import REPO_ROOT
from harness.cache import cache_dir, content_hash
from harness.errors import BuildError

log = logging.getLogger(__name__)

TOOLCHAINS_DIR = REPO_ROOT / "targets" / "toolchains"
#: The base the Dockerfiles name by default (``ARG BASE``); used when present locally.
DEFAULT_BASE = "debian:bookworm-slim"
#: The base `bootstrap_base_image` builds offline when DEFAULT_BASE is absent.
BOOTSTRAP_BASE = "minrt-base:bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Label on every image and container this module creates, so they can be told apart.
LABEL = "org.minrt.toolchain"
#: Label with a token of its own on each container `DockerToolchain.run` creates: a container
#: whose creation was cut short (Ctrl-C while the engine made it) is found by it and removed.
RUN_LABEL = "org.minrt.run"

_NO_ENGINE_HELP = (
    "start one with `ci/services` (as root), or by hand with "
    "`dockerd --bridge=none --iptables=false &`, or build with the host's compiler "
    "instead: `--toolchain host`"
)


def docker_client() -> Any:
    """A client for the engine named by $DOCKER_HOST (default: the local socket).

    Raises BuildError saying how to start an engine when none answers.
    """
    import docker  # imported here: only the Docker toolchain needs it

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        # A short timeout to find out whether anything answers; builds get a long one.
        client = docker.from_env(version="auto", timeout=15)
        client.ping()
        client.api.timeout = 600
    except docker.errors.DockerException as exc:
        raise BuildError(
            f"no Docker engine answers at {where} ({_short(exc)}); {_NO_ENGINE_HELP}"
        ) from None
    return client


def _plain(text: str) -> str:
    """Text without ANSI escape sequences (colours, cursor moves) the engine puts in build logs."""
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _image_exists(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


@contextlib.contextmanager
def _image_lock(tag: str) -> Iterator[None]:
    """Serialise building one image across processes (parallel farm jobs on a fresh machine
    would otherwise each bootstrap and build the same image)."""
    lock_dir = cache_dir() / "images"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / (tag.replace("/", "_").replace(":", "_") + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def bootstrap_base_image(
    tag: str = BOOTSTRAP_BASE,
    suite: str = "bookworm",
    mirror: str = DEFAULT_MIRROR,
    client: Any = None,
) -> str:
    """Build a minimal Debian base image without a registry: debootstrap + docker import.

    Needs root (debootstrap) and the Debian mirror. Takes about a minute. Returns the tag.
    """
    client = client or docker_client()
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (apt-get install debootstrap, or run ci/setup)")
    if os.geteuid() != 0:
        raise BuildError(f"bootstrapping the base image {tag} needs root (debootstrap)")
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir()))
    try:
        rootfs = work / "rootfs"
        log.info("bootstrapping base image %s: debootstrap --variant=minbase %s from %s", tag, suite, mirror)
        argv = ["debootstrap", "--variant=minbase", suite, str(rootfs), mirror]
        try:
            _run_logged(argv, "debootstrap")
        except BuildError as exc:
            raise BuildError(
                f"bootstrapping base image {tag} from {mirror} failed (is the mirror reachable?): {exc}"
            ) from None
        # Downloaded .debs are not part of the system; leaving them out halves the image.
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tarball = work / "rootfs.tar"
        log.info("packing %s into a tarball", rootfs)
        _run_logged(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], "tar")
        repository, _, version = tag.rpartition(":")
        if not repository or "/" in version:  # no tag given (a colon may be a registry port)
            repository, version = tag, "latest"
        log.info("importing the base image as %s", tag)
        client.api.import_image_from_file(
            str(tarball), repository=repository, tag=version,
            changes=[f"LABEL {LABEL}=base", 'CMD ["/bin/bash"]'],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("base image %s ready", tag)
    return tag


def _run_logged(argv: Sequence[str], what: str) -> None:
    """Run argv, its output streamed to the log at INFO; BuildError on failure."""
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            log.info("%s: %s", what, line)
            tail = (tail + [line])[-15:]
    if proc.wait() != 0:
        raise BuildError(
            f"command failed (exit {proc.returncode}): {' '.join(argv)}\n" + "\n".join(tail)
        )


def resolve_base(client: Any) -> str:
    """The base image for toolchain builds: DEFAULT_BASE when present locally, otherwise
    BOOTSTRAP_BASE, bootstrapped now if it does not exist yet. Never contacts a registry."""
    if _image_exists(client, DEFAULT_BASE):
        return DEFAULT_BASE
    if _image_exists(client, BOOTSTRAP_BASE):
        return BOOTSTRAP_BASE
    with _image_lock(BOOTSTRAP_BASE):
        if not _image_exists(client, BOOTSTRAP_BASE):  # another process may have made it
            log.info(
                "base image %s is not present and no registry is used: bootstrapping %s offline",
                DEFAULT_BASE, BOOTSTRAP_BASE,
            )
            bootstrap_base_image(BOOTSTRAP_BASE, client=client)
    return BOOTSTRAP_BASE


def _mount_roots(paths: Sequence[Path]) -> list[Path]:
    """The given directories resolved, without any that lies inside another."""
    roots = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in roots:
        if not any(p.is_relative_to(k) for k in kept):
            kept.append(p)
    return kept


@dataclass
class DockerToolchain:
    """Runs compiler commands inside the toolchain image built from
    ``targets/toolchains/<image_name>.Dockerfile``.

    `compiler` is the C compiler `describe` reports (the target's, e.g.
    ``arm-linux-gnueabihf-gcc``). `base` overrides the base image (default: `resolve_base`).
    `mounts` are the host directories shared with containers at the same paths (default:
    the source tree and the cache); every command's cwd must lie inside one of them.
    `engine` is a Docker client to reuse (default: one from `docker_client`, made on first use).
    """

    image_name: str
    compiler: str = "gcc"
    base: str | None = None
    mounts: tuple[Path, ...] = ()
    timeout: float = 600.0
    toolchains_dir: Path = TOOLCHAINS_DIR
    name: str = "docker"
    engine: Any = field(default=None, repr=False, compare=False)
    _tag: str | None = field(default=None, init=False, repr=False)
    _description: str | None = field(default=None, init=False, repr=False)

    @property
    def dockerfile(self) -> Path:
        return self.toolchains_dir / f"{self.image_name}.Dockerfile"

    def tag_for(self, base: str) -> str:
        """The tag of the image built from the Dockerfile as it is now on top of `base`."""
        digest = content_hash([self.dockerfile.read_bytes(), base])
        return f"minrt-toolchain-{self.image_name}:{digest}"

    def client(self) -> Any:
        if self.engine is None:
            self.engine = docker_client()
        return self.engine

    def image_tag(self) -> str:
        """The image's tag; builds the image (and its base) first if it does not exist."""
        if self._tag is not None:
            return self._tag
        if not self.dockerfile.is_file():
            known = ", ".join(toolchain_names(self.toolchains_dir))
            raise BuildError(
                f"toolchain image '{self.image_name}': {self.dockerfile} does not exist "
                f"(known: {known or 'none'})"
            )
        client = self.client()
        base = self.base or resolve_base(client)
        if not _image_exists(client, base):
            raise BuildError(
                f"base image '{base}' is not present in the Docker engine; load or pull it, "
                f"or leave the base unset to bootstrap {BOOTSTRAP_BASE} offline"
            )
        tag = self.tag_for(base)
        if _image_exists(client, tag):
            log.debug("toolchain image %s is cached", tag)
        else:
            with _image_lock(tag):
                if not _image_exists(client, tag):  # another process may have built it
                    self._build(client, tag, base)
        self._tag = tag
        return tag

    def _build(self, client: Any, tag: str, base: str) -> None:
        import docker

        # The build's own log (hundreds of lines, with the engine's ANSI codes) goes to a file;
        # -v also shows it line by line. A failure names the file and quotes its last lines.
        log_path = cache_dir() / "logs" / f"docker-build-{self.image_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("building toolchain image %s from %s (base %s); its log: %s", tag, self.dockerfile.name, base, log_path)
        last: list[str] = []
        try:
            with open(log_path, "w", encoding="utf-8", buffering=1) as build_log:  # line by line: can be followed
                # The low-level API streams the build log; the classic builder is what the
                # engine runs for this endpoint (no BuildKit on these machines).
                for chunk in client.api.build(
                    path=str(self.toolchains_dir),
                    dockerfile=self.dockerfile.name,
                    tag=tag,
                    buildargs={"BASE": base},
                    pull=False,
                    network_mode="host",
                    rm=True,
                    forcerm=True,
                    labels={LABEL: self.image_name},
                    decode=True,
                ):
                    if "error" in chunk:
                        build_log.write(chunk["error"])
                        raise BuildError(
                            f"building toolchain image {tag} failed: {_plain(chunk['error']).strip()} "
                            f"(whole log: {log_path})\n" + "\n".join(last)
                        )
                    text = chunk.get("stream") or chunk.get("status") or ""
                    build_log.write(text if text.endswith("\n") else text + "\n")
                    for line in _plain(text).splitlines():
                        if line.strip():
                            log.debug("image %s: %s", self.image_name, line.rstrip())
                            last = (last + [line.rstrip()])[-15:]
        except docker.errors.APIError as exc:
            raise BuildError(f"building toolchain image {tag} failed: {_short(exc)} (log: {log_path})") from None
        if not _image_exists(client, tag):
            raise BuildError(f"building toolchain image {tag} ended without an image (log: {log_path}):\n"
                             + "\n".join(last))
        log.info("toolchain image %s built", tag)

    def run(self, argv: Sequence[str], cwd: Path) -> str:
        """Run argv in a fresh container in cwd; return stdout; BuildError on failure."""
        import docker
        import requests

        argv = [str(a) for a in argv]
        cwd = Path(cwd).resolve()
        roots = _mount_roots(self.mounts or (REPO_ROOT, cache_dir()))
        if not any(cwd.is_relative_to(r) for r in roots):
            raise BuildError(
                f"cannot run {argv[0]} in {cwd}: the Docker toolchain only sees "
                + ", ".join(str(r) for r in roots)
            )
        tag = self.image_tag()
        client = self.client()
        log.debug("docker[%s]$ %s", tag, " ".join(argv))
        token = secrets.token_hex(8)
        container = None
        try:
            try:
                container = client.containers.create(
                    tag,
                    command=argv,
                    working_dir=str(cwd),
                    user=f"{os.getuid()}:{os.getgid()}",
                    environment={"HOME": "/tmp", "LC_ALL": "C", "SOURCE_DATE_EPOCH": "0"},
                    volumes={str(r): {"bind": str(r), "mode": "rw"} for r in roots},
                    network_mode="none",
                    labels={LABEL: self.image_name, RUN_LABEL: token},
                )
            except docker.errors.APIError as exc:
                token = ""  # the engine refused the create: there is no container to look for
                raise BuildError(f"cannot create a container from {tag}: {_short(exc)}") from None
            container.start()
            try:
                status = container.wait(timeout=self.timeout)
            except requests.exceptions.RequestException:
                # A read timeout (surfacing as ConnectionError over a unix socket), or the
                # engine went away: either way the command did not finish.
                container.kill()
                raise BuildError(
                    f"command timed out after {self.timeout:.0f}s in {tag}: {' '.join(argv)}"
                ) from None
            stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        except docker.errors.APIError as exc:
            raise BuildError(f"running {argv[0]} in {tag} failed: {_short(exc)}") from None
        finally:
            _discard(client, container, token)
        code = status.get("StatusCode", -1)
        if code != 0:
            raise BuildError(
                f"command failed in {tag} (exit {code}): {' '.join(argv)}\n{stderr.strip()}"
            )
        return stdout

    def describe(self) -> str:
        """The image tag and the compiler's version line."""
        if self._description is None:
            version = self.run([self.compiler, "--version"], cwd=REPO_ROOT).splitlines()
            self._description = f"{self.image_tag()} ({version[0] if version else self.compiler})"
        return self._description


def _discard(client: Any, container: Any, token: str) -> None:
    """Remove a run's container. Without its id (a Ctrl-C or SIGTERM while the engine created
    it), or when the removal itself is cut short, it is found by its RUN_LABEL token."""
    import docker

    if container is None:
        if token:
            _remove_labelled(client, token)
        return
    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass
    except BaseException:
        _remove_labelled(client, token, wait=0)  # known to exist: one look finds it, if left
        raise


#: how long a container whose create request was cut short is looked for: the engine may still
#: be making it, and on a loaded host that took longer than the second the old four looks spanned
#: (the container then appeared after the last look and stayed, "Created")
CUT_CREATE_WAIT_S = 10.0


def _remove_labelled(client: Any, token: str, wait: float = CUT_CREATE_WAIT_S) -> None:
    """Remove the container labelled RUN_LABEL=token. The engine may still be creating it when
    the request that asked for it was cut short, so a container not found yet is looked for
    again, for up to `wait` seconds (a create that never reached the engine costs that wait)."""
    import docker

    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            found = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={token}"})
            for container in found:
                container.remove(force=True)
                log.info("removed container %s, whose creation was interrupted", container.short_id)
        except docker.errors.APIError as exc:
            log.info("could not remove the container labelled %s=%s: %s", RUN_LABEL, token, _short(exc))
            return
        if found:
            return
        if time.monotonic() >= deadline:
            if wait:
                log.info("no container labelled %s=%s appeared within %g s: its create never reached "
                         "the engine", RUN_LABEL, token, wait)
            return
        if not said:
            log.info("waiting up to %g s for the engine to finish a container whose create was cut short", wait)
            said = True
        time.sleep(0.25)


def toolchain_names(directory: Path = TOOLCHAINS_DIR) -> list[str]:
    """The toolchain images that can be built: one per Dockerfile in targets/toolchains/."""
    return sorted(p.name.removesuffix(".Dockerfile") for p in directory.glob("*.Dockerfile"))


def prepare_toolchains(names: Sequence[str] | None = None) -> dict[str, str]:
    """Make every named toolchain image (default: all) ready, bootstrapping the base offline
    first when needed. Returns {name: image tag}. What `harness toolchain bootstrap` runs."""
    client = docker_client()
    base = resolve_base(client)
    tags = {}
    for name in names or toolchain_names():
        tags[name] = DockerToolchain(name, base=base, engine=client).image_tag()
    return tags

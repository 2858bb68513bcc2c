"""The on-disk cache: compiled artifacts, runner builds, toolchain images and board images,
each keyed by a hash of everything that goes into it."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from harness import REPO_ROOT
from harness.errors import CacheError

#: Less free space than this under the cache counts as full: an artifact with its kernels is
#: up to a few MiB, a runner build about one.
MIN_FREE_BYTES = 16 << 20


def cache_dir() -> Path:
    """`$MINRT_CACHE`, or `.cache` in the source tree: created if missing, and checked to be a
    directory this process can write (a clear CacheError otherwise, before any work starts)."""
    from_env = os.environ.get("MINRT_CACHE")
    path = Path(from_env or REPO_ROOT / ".cache")
    where = f"cache directory {path}" + (" (MINRT_CACHE)" if from_env else "")
    if path.exists() and not path.is_dir():
        raise CacheError(f"{where} is not a directory; point MINRT_CACHE at a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Root ignores mode bits, so only a real write proves the directory is writable.
        with tempfile.TemporaryFile(dir=path, prefix=".probe-"):
            pass
        free = shutil.disk_usage(path).free
    except OSError as exc:
        raise cache_error(exc, where) from None
    if free < MIN_FREE_BYTES:
        # LLVM ends the whole process when its object file does not fit: refuse up front.
        raise cache_error(OSError(errno.ENOSPC, f"only {free // 1024} KiB free, fewer than "
                                                f"{MIN_FREE_BYTES >> 20} MiB"), where)
    return path


def cache_error(exc: OSError, where: str) -> CacheError:
    """A one-line CacheError for a failed write under the cache, saying what to do."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        advice = "the disk is full: free space or point MINRT_CACHE elsewhere"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "it is not writable: fix its permissions or point MINRT_CACHE elsewhere"
    else:
        advice = "point MINRT_CACHE at a writable directory"
    return CacheError(f"{where}: {exc.strerror or exc} ({advice})")


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it 0700: for files other local users
    must not read, such as a board's initrd, which holds its SSH host private key."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def content_hash(parts: Iterable[bytes | str], length: int = 16) -> str:
    """A short hex digest of the given parts, each length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:length]


#: The checksum file of a sealed cache entry, in `sha256sum` format (`sha256sum -c` reads it).
SEAL = "SHA256SUMS"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(directory: Path, names: Iterable[str]) -> None:
    """Record the sha256 of each named file of a finished cache entry, so a later use can tell
    a truncated or altered file (a full disk, a crash, a hand edit) from a good one."""
    lines = [f"{_file_sha256(directory / name)}  {name}\n" for name in sorted(names)]
    (directory / SEAL).write_text("".join(lines))


def seal_broken(directory: Path) -> str | None:
    """Why a sealed cache entry cannot be trusted (no seal, a file missing or changed), or None."""
    try:
        lines = (directory / SEAL).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return f"no readable {SEAL}"
    if not lines:
        return f"{SEAL} is empty"
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or "/" in name or name in ("", ".", ".."):
            return f"{SEAL} has a malformed line"
        try:
            actual = _file_sha256(directory / name)
        except OSError:
            return f"{name} is missing"
        if actual != digest:
            return f"{name} does not match its checksum"
    return None

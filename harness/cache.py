"""The on-disk cache: compiled artifacts, runner builds, toolchain images and board images,
each keyed by a hash of everything that goes into it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from . import REPO_ROOT


def cache_dir() -> Path:
    """`$MINRT_CACHE`, or `.cache` in the source tree."""
    path = Path(os.environ.get("MINRT_CACHE") or REPO_ROOT / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(parts: Iterable[bytes | str], length: int = 16) -> str:
    """A short hex digest of the given parts, each length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:length]

"""TVM's C++ side writes warnings straight to the process' stderr (`llvm_instance.cc:986:
Warning: ...`, `BlockBuilder destroyed with remaining blocks!`), past Python's logging and -q.
While TVM works, that stderr goes to a log file in the cache instead; -v (the "harness"
logger at DEBUG) leaves it on the terminal. When the work fails, the file's path is logged.

The harness' own log lines are not affected when its logging handler writes to a duplicate
of the terminal's stderr (harness.cli does that), not to file descriptor 2 itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None


def native_log_path() -> Path:
    from harness.cache import cache_dir

    return cache_dir() / "logs" / "tvm.log"


@contextlib.contextmanager
def native_stderr_to_log(what: str) -> Iterator[Path | None]:
    """Send file descriptor 2 to `<cache>/logs/tvm.log` (appended) for the duration, unless
    the harness logs at DEBUG; yields the path (None when not redirected). Nested uses share
    one redirection."""
    global _depth, _saved_fd
    if logging.getLogger("harness").isEnabledFor(logging.DEBUG):
        yield None
        return
    path = native_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # an unwritable cache is reported by whoever writes the artifact
        yield None
        return
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(2)
            os.write(fd, f"--- {what}\n".encode())
            os.dup2(fd, 2)
        _depth += 1
        start = os.fstat(fd).st_size
    os.close(fd)
    try:
        yield path
    except Exception:
        if path.stat().st_size > start:  # TVM said something: it may say why
            log.warning("TVM's own messages for %s are in %s", what, path)
        raise
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                sys.stderr.flush()
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None

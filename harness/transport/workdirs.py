"""Private work directories on devices, remembered on the host until they are removed.

A session (SSH or serial) makes a private `/tmp/minrt.XXXXXXXX` on the device and removes it
when it closes. A session that cannot close cleanly (the device froze or died, the harness
was killed) leaves the directory, and maybe a runner still working in it. Each directory is
therefore recorded on the host, in `cache_dir()/workdirs/<device>/`, with the host process
that made it; the next session to the same device removes every directory whose process is
gone, and stops what still runs in it. The record is on the host because the device cannot
tell a directory of a live session from one of a dead session: another harness process may
be using the same board right now.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from harness.cache import cache_dir
from harness.errors import CacheError

log = logging.getLogger(__name__)

#: A shell script (argument $1: a work directory) that stops every process whose current
#: directory is that directory (a runner started there by `cd WORKDIR && exec ...`), then
#: removes it. busybox sh and readlink are enough.
REMOVE_SCRIPT = ('wd="$1"; cd / || exit; for p in /proc/[0-9]*; do [ "$(readlink "$p/cwd" 2>/dev/null)" = "$wd" ] '
                 '&& kill -KILL "${p#/proc/}" 2>/dev/null; done; rm -rf -- "$wd"')


def remove_command(workdir: str) -> str:
    """A shell command line that stops what runs in `workdir` and removes it. It leaves the
    directory first (`cd /`): an interactive shell in it (the serial console's) is not stopped."""
    return "cd / && " + shlex.join(["sh", "-c", REMOVE_SCRIPT, "sh", workdir])


def _process_tag(pid: int) -> str | None:
    """`pid-starttime`: a process, told apart from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return f"{pid}-{fields[19]}"  # field 22 of stat: the start time in clock ticks


class WorkdirRecords:
    """The work directories this host made on one device (named as errors name it). With no
    usable cache directory nothing is recorded: a session then cleans up only after itself."""

    def __init__(self, device: str) -> None:
        self.device = device
        digest = hashlib.sha256(device.encode()).hexdigest()[:16]
        try:
            self.directory: Path | None = cache_dir() / "workdirs" / digest
        except CacheError as exc:
            log.info("%s: work directories are not recorded: %s", device, exc)
            self.directory = None

    def record(self, workdir: str) -> None:
        """Remember that this process made `workdir` on the device."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tag = _process_tag(os.getpid())
            (self.directory / f"{tag}.{Path(workdir).name}").write_text(workdir)
        except OSError as exc:  # a cache that cannot be written loses only this cleanup
            log.info("%s: cannot record work directory %s: %s", self.device, workdir, exc)

    def forget(self, workdir: str) -> None:
        """`workdir` was removed: forget it."""
        for entry in self._entries():
            if entry.read_text() == workdir:
                entry.unlink(missing_ok=True)

    def stale(self) -> list[tuple[Path, str]]:
        """(record, work directory) of every directory whose process has ended."""
        found = []
        for entry in self._entries():
            tag = entry.name.split(".", 1)[0]
            pid = tag.split("-", 1)[0]
            if pid.isdigit() and _process_tag(int(pid)) == tag:
                continue  # its session may still be running
            try:
                workdir = entry.read_text()
            except OSError:
                continue
            # only what a session made: an absolute path to a minrt.* directory
            if workdir.startswith("/") and PurePosixPath(workdir).name.startswith("minrt."):
                found.append((entry, workdir))
            else:
                entry.unlink(missing_ok=True)
        return found

    def remove_stale(self, remove: Callable[[str], str | None]) -> None:
        """Remove every stale directory with `remove`, which runs remove_command(directory)
        on the device and returns None, or why it failed."""
        for entry, workdir in self.stale():
            error = remove(workdir)
            if error is None:
                entry.unlink(missing_ok=True)
                log.info("%s: removed %s, left by an earlier session", self.device, workdir)
            else:
                log.info("%s: could not remove %s: %s", self.device, workdir, error)

    def _entries(self) -> list[Path]:
        if self.directory is None:
            return []
        try:
            return sorted(p for p in self.directory.iterdir() if p.is_file())
        except OSError:
            return []

"""Leases: one job per device at a time, across threads, processes and (with labgrid) hosts.

`LeaseBackend.acquire(what, timeout)` takes a device name or a target name (then any free
device of that target) and returns a `Lease`, which is released by `release()` or by leaving
its `with` block. Two backends:

- `LocalLeases`: a lock file per device under the cache dir, held with flock(2). flock locks
  belong to an open file, so two threads of one process exclude each other too, and the kernel
  drops the lock when the holding process dies: a killed job never leaves a device stuck.
- `LabgridLeases`: each device is a labgrid *place* on a coordinator, tagged with its target; a
  lease on a target is a labgrid reservation (the coordinator's scheduler picks the place) then
  labgrid's own acquire/release, done with `labgrid-client` (argv lists, never a shell). Places
  are acquired under the user name `minrt-<pid>` of this host, so a lease whose holder died on
  this host is reclaimed (`release-from`, its reservation cancelled); a holder on another host
  is waited for, as labgrid intends.
  labgrid is an optional extra (`pip install harness[farm]`) or lives in its own venv
  (`ensure_labgrid_venv`), because it replaces pyserial with its fork.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Protocol, Sequence

from harness.errors import DeviceError, HarnessError

if TYPE_CHECKING:
    from harness.farm.inventory import Device, Inventory

log = logging.getLogger(__name__)

LABGRID_VERSION = "26.0.1"


class LeaseTimeout(HarnessError):
    """No device could be leased within the timeout."""


class Lease:
    """A device held by this process until `release()` (or the end of a `with` block)."""

    def __init__(self, device: str, release: Callable[[], None]):
        self.device = device
        self._release = release
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._release()
            log.debug("lease: released %s", self.device)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseBackend(Protocol):
    def acquire(self, what: str, timeout: float, exclude: Collection[str] = ()) -> Lease:
        """Lease device `what`, or any device of target `what` not in `exclude`."""
        ...


def _candidates(inventory: "Inventory", what: str, exclude: Collection[str]) -> list["Device"]:
    if what in inventory.by_name:
        devices = [inventory.by_name[what]]
    else:
        devices = inventory.for_target(what)
        if not devices:
            raise HarnessError(
                f"lease: '{what}' is neither a device nor a target of inventory {inventory.path}"
            )
    devices = [d for d in devices if d.name not in exclude]
    if not devices:
        raise LeaseTimeout(f"lease: no device left for '{what}' (excluded: {', '.join(sorted(exclude))})")
    return devices


def _poll(what: str, timeout: float, try_once: Callable[[], Lease | None], interval: float) -> Lease:
    deadline = time.monotonic() + timeout
    while True:
        lease = try_once()
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            raise LeaseTimeout(f"lease: no free device for '{what}' within {timeout:g} s")
        time.sleep(interval)


# -- local --------------------------------------------------------------------------------


@dataclass
class LocalLeases:
    """Leases as flock(2)ed files `<lock_dir>/<device>.lock` (one host, any processes)."""

    inventory: "Inventory"
    lock_dir: Path = field(default_factory=lambda: _default_lock_dir())
    poll_seconds: float = 0.2  # a try is one flock call: cheap

    def __post_init__(self) -> None:
        self.lock_dir = Path(self.lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)

    def _try(self, device: str) -> Lease | None:
        path = self.lock_dir / f"{device}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # Who holds it, for a human looking at the lock dir; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        log.debug("lease: acquired %s (%s)", device, path)
        return Lease(device, release)

    def acquire(self, what: str, timeout: float, exclude: Collection[str] = ()) -> Lease:
        devices = _candidates(self.inventory, what, exclude)

        def try_once() -> Lease | None:
            for d in devices:
                lease = self._try(d.name)
                if lease is not None:
                    return lease
            return None

        return _poll(what, timeout, try_once, self.poll_seconds)


def _default_lock_dir() -> Path:
    from harness.cache import cache_dir

    return cache_dir() / "leases"


# -- labgrid ------------------------------------------------------------------------------


def ensure_labgrid_venv(venv: Path | None = None, timeout: float = 600) -> Path:
    """Install labgrid into its own venv (default `<cache>/venvs/labgrid`) if needed and return
    the path of its `labgrid-client`. Keeps labgrid's pyserial fork out of the main venv."""
    if venv is None:
        from harness.cache import cache_dir

        venv = cache_dir() / "venvs" / "labgrid"
    client = venv / "bin" / "labgrid-client"
    if client.exists():
        return client
    log.info("labgrid: installing labgrid %s into %s", LABGRID_VERSION, venv)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                       capture_output=True, text=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        f"labgrid=={LABGRID_VERSION}"], check=True, timeout=timeout,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"labgrid: installing into {venv} failed: {exc.stderr.strip()[-500:]}") from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"labgrid: installing into {venv} took more than {timeout:g} s") from None
    return client


def find_labgrid_client() -> Path:
    """`labgrid-client` on PATH, beside this Python, or in the cache's labgrid venv."""
    found = shutil.which("labgrid-client")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "labgrid-client"
    if beside.exists():
        return beside
    from harness.cache import cache_dir

    cached = cache_dir() / "venvs" / "labgrid" / "bin" / "labgrid-client"
    if cached.exists():
        return cached
    raise HarnessError(
        "labgrid: labgrid-client not found; install the optional extra "
        "(pip install 'harness[farm]') or call harness.farm.lease.ensure_labgrid_venv()"
    )


_OWNER_RE = re.compile(r"acquired by ([^/\s]+)/minrt-(\d+)")
_TOKEN_RE = re.compile(r"LG_TOKEN=(\S+)")
_ACQUIRED_RE = re.compile(r"acquired place (\S+)")
_RESERVATION_RE = re.compile(r"^\s*reservation:\s*(\S+)", re.MULTILINE)


@dataclass
class LabgridLeases:
    """Leases as labgrid places on the coordinator at `coordinator` ("host:port").

    Every device of the inventory is a place named `place_prefix + device`, tagged
    `minrt_target=<target>`; `setup_places()` creates missing ones (idempotent). A lease on a
    target goes through a labgrid *reservation* (`reserve minrt_target=T`), so the
    coordinator's scheduler picks the place, fairly among every client of the lab; a lease on
    a named device, or on a target with devices to avoid, acquires places one by one.
    """

    inventory: "Inventory"
    coordinator: str
    client: Path | None = None
    place_prefix: str = "minrt-"
    command_timeout: float = 30.0
    poll_seconds: float = 2.0  # a try is a few labgrid-client runs: spare the coordinator

    def __post_init__(self) -> None:
        self.client = Path(self.client) if self.client else find_labgrid_client()
        self.hostname = socket.gethostname()
        self.username = f"minrt-{os.getpid()}"

    def place(self, device: str) -> str:
        return f"{self.place_prefix}{device}"

    def _client(self, args: Sequence[str], check: bool = True, username: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, LG_COORDINATOR=self.coordinator, LG_HOSTNAME=self.hostname,
                   LG_USERNAME=username or self.username)
        for key in ("LG_PLACE", "LG_TOKEN"):
            env.pop(key, None)
        argv = [str(self.client), *args]
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=self.command_timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"labgrid: '{' '.join(args)}' got no answer from coordinator {self.coordinator} "
                f"within {self.command_timeout:g} s"
            ) from None
        if check and proc.returncode != 0:
            raise HarnessError(f"labgrid: '{' '.join(args)}' failed: {_last_line(proc)}")
        return proc

    def places(self) -> list[str]:
        return self._client(["places"]).stdout.split()

    def setup_places(self) -> None:
        """Create a place per inventory device (tagged with its target) where missing."""
        existing = set(self.places())
        for device in self.inventory.devices:
            name = self.place(device.name)
            if name not in existing:
                self._client(["-p", name, "create"])
                log.info("labgrid: created place %s", name)
            self._client(["-p", name, "set-tags", f"minrt_target={device.target}"])
            for match in device.labgrid_matches:
                self._client(["-p", name, "add-match", match], check=False)

    # -- holders that died ------------------------------------------------------------

    def _reclaim(self, place: str, holder_host: str, pid: int) -> bool:
        """Release a place held by a minrt process of this host that no longer runs, and
        cancel its reservation (the coordinator would keep the place for it otherwise)."""
        if holder_host != self.hostname or pid == os.getpid() or _pid_alive(pid):
            return False
        holder = f"{holder_host}/minrt-{pid}"
        show = self._client(["-p", place, "show"], check=False).stdout
        self._client(["-p", place, "release-from", holder], check=False)
        m = _RESERVATION_RE.search(show)
        if m and m.group(1) != "None":
            self._client(["cancel-reservation", m.group(1)], check=False)
        log.warning("labgrid: reclaimed place %s from %s, whose process is gone", place, holder)
        return True

    def _reclaim_dead_holders(self, places: Collection[str]) -> bool:
        reclaimed = False
        for line in self._client(["who"], check=False).stdout.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3 and cols[2] in places and cols[0].startswith("minrt-") and cols[0][6:].isdigit():
                reclaimed |= self._reclaim(cols[2], cols[1], int(cols[0][6:]))
        return reclaimed

    # -- acquiring --------------------------------------------------------------------

    def _lease(self, place: str, token: str | None) -> Lease:
        device = place[len(self.place_prefix):]

        def release() -> None:
            self._client(["-p", place, "release"], check=False)
            if token:
                self._client(["cancel-reservation", token], check=False)

        log.debug("labgrid: acquired place %s%s", place, f" (reservation {token})" if token else "")
        return Lease(device, release)

    def _try_place(self, device: "Device") -> Lease | None:
        place = self.place(device.name)
        args = ["-p", place, "acquire"]
        if not device.labgrid_matches:
            args.append("--allow-unmatched")
        proc = self._client(args, check=False)
        if proc.returncode == 0:
            return self._lease(place, None)
        msg = proc.stderr + proc.stdout
        m = _OWNER_RE.search(msg)
        if m and self._reclaim(place, m.group(1), int(m.group(2))):
            return self._try_place(device)
        if "already acquired" in msg or "was not reserved for" in msg:
            return None
        raise DeviceError(f"labgrid: acquiring place {place} failed: {_last_line(proc)}")

    def _try_reservation(self, target: str, devices: Sequence["Device"]) -> Lease | None:
        out = self._client(["reserve", "--shell", f"minrt_target={target}"]).stdout
        m = _TOKEN_RE.search(out)
        if not m:
            raise HarnessError(f"labgrid: 'reserve' printed no token: {out.strip()}")
        token = m.group(1)
        args = ["-p", f"+{token}", "acquire"]
        if any(not d.labgrid_matches for d in devices):
            args.append("--allow-unmatched")
        proc = self._client(args, check=False)
        if proc.returncode == 0:
            acquired = _ACQUIRED_RE.search(proc.stdout)
            if not acquired:
                raise HarnessError(f"labgrid: acquire printed no place: {proc.stdout.strip()}")
            return self._lease(acquired.group(1), token)
        # Not allocated now: withdraw, so that the place is not held for us later.
        self._client(["cancel-reservation", token], check=False)
        if "matches nothing" not in proc.stderr + proc.stdout:
            raise DeviceError(f"labgrid: acquiring a {target} place failed: {_last_line(proc)}")
        if self._reclaim_dead_holders({self.place(d.name) for d in devices}):
            return self._try_reservation(target, devices)
        return None

    def acquire(self, what: str, timeout: float, exclude: Collection[str] = ()) -> Lease:
        devices = _candidates(self.inventory, what, exclude)
        by_reservation = what not in self.inventory.by_name and not exclude

        def try_once() -> Lease | None:
            if by_reservation:
                return self._try_reservation(what, devices)
            for d in devices:
                lease = self._try_place(d)
                if lease is not None:
                    return lease
            return None

        return _poll(what, timeout, try_once, self.poll_seconds)

    def holder(self, device: str) -> str | None:
        """Who holds a device's place ("host/user"), or None when it is free."""
        out = self._client(["-p", self.place(device), "show"]).stdout
        m = re.search(r"^\s*acquired:\s*(\S+)", out, re.MULTILINE)
        return None if not m or m.group(1) == "None" else m.group(1)

    def reservations(self) -> list[str]:
        """Tokens of the reservations the coordinator holds (any owner)."""
        out = self._client(["reservations"]).stdout
        return re.findall(r"^Reservation '(\S+)':", out, re.MULTILINE)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in (proc.stderr or proc.stdout).strip().splitlines() if l.strip()]
    # labgrid-client prints "labgrid-client: Error: ..." before any traceback.
    errors = [l for l in lines if "Error:" in l]
    return (errors[0] if errors else lines[-1] if lines else f"exit status {proc.returncode}").strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited: it holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

"""SSH transport (fabric over paramiko): a Raspberry Pi, the emulated board, any Linux device.

Host keys are verified against a known_hosts file (RejectPolicy). `trust_on_first_use=True`
records the key of a host the file does not know yet; a key that differs from the recorded one
is always refused. Every step (connect, command, transfer) has a timeout, and a lost connection
raises DeviceError naming the host and the step instead of hanging.

Commands run in `workdir`; relative remote paths are relative to it. By default that is a
fresh private directory made on connect by `mktemp -d` (mode 0700, so no other user of the
device can pre-create it or swap a file in) and removed on close; an explicit `workdir` is
used as given.
Files go over SFTP when the server offers it, else through `cat` on an exec channel (dropbear
has no SFTP server of its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import stat
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import fabric
import paramiko

from harness.errors import DeviceError, TargetError
from harness.transport.base import CommandResult, RunsModelWithFiles, TransportKind
from harness.transport.workdirs import WorkdirRecords, remove_command

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_POLL_S = 0.05
_CHANNEL_TRIES = 4  # a refused channel open is asked again this many times in all
#: while a command runs, the server is asked for an answer this often...
HEARTBEAT_INTERVAL_S = 5.0
#: ...and a device that answers nothing for this long has frozen (a run may take minutes:
#: without this, a frozen board was noticed only at the run's timeout, 300 s)
HEARTBEAT_TIMEOUT_S = 20.0


class SSHTransport(RunsModelWithFiles):
    """A connection to one device over SSH. Use as a context manager or call close()."""

    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        user: str = "root",
        key_filename: Path | str | None = None,
        known_hosts: Path | str | None = None,
        trust_on_first_use: bool = False,
        allow_agent: bool = True,
        workdir: str | None = None,
        connect_timeout: float = 15.0,
        transfer_timeout: float = 120.0,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        """`connect_timeout` bounds connecting and each short step; `transfer_timeout` bounds a
        file copy (over SFTP: each request; through cat: the whole copy); `heartbeat_timeout`
        is how long a command may go with the device answering nothing (see _Heartbeat)."""
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise TargetError(f"SSH port {port} of {host} is out of range (1-65535)")
        self.host = host
        self.port = port
        self.user = user
        self._private_workdir = workdir is None
        self.workdir = workdir or ""
        self.known_hosts = Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self.trust_on_first_use = trust_on_first_use
        self.connect_timeout = connect_timeout
        self.transfer_timeout = transfer_timeout
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_missing = False
        self.heartbeat_timeout = heartbeat_timeout
        self._records = WorkdirRecords(self.name)

        connect_kwargs: dict[str, Any] = {
            "allow_agent": allow_agent,
            "look_for_keys": key_filename is None,
            "banner_timeout": connect_timeout,
            "auth_timeout": connect_timeout,
            "channel_timeout": connect_timeout,
        }
        if key_filename is not None:
            connect_kwargs["key_filename"] = [str(key_filename)]
        self._conn = fabric.Connection(
            host, user=user, port=port, connect_timeout=max(1, int(connect_timeout)),
            connect_kwargs=connect_kwargs,
        )
        self._connect()

    @property
    def name(self) -> str:
        """`user@host:port`, how errors name the device."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def host_key_name(self) -> str:
        """The name of this host in known_hosts (`[host]:port` unless the port is 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    # -- connection ---------------------------------------------------------------------------

    def _load_host_keys(self, client: paramiko.SSHClient) -> None:
        """known_hosts into `client`; a line paramiko cannot read is the file's fault (bad input)."""
        try:
            client.load_host_keys(str(self.known_hosts))
        except OSError as exc:
            raise TargetError(f"{exc.filename or self.known_hosts}: cannot read known_hosts: {exc.strerror}") from None
        # paramiko raises InvalidHostKey (a bare Exception), ValueError, binascii/struct errors...
        # for a line it cannot decode: each says the file is bad, none is a harness bug.
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).splitlines() or [""])[0]
            raise TargetError(f"{self.known_hosts}: not a valid known_hosts file ({type(exc).__name__}: "
                              f"{first}); fix or remove the line") from None

    def _connect(self) -> None:
        client: paramiko.SSHClient = self._conn.client
        # fabric trusts every key by default: replace that with verification against one file.
        if self.known_hosts.exists():
            self._load_host_keys(client)
        elif self.trust_on_first_use:
            if not self.known_hosts.parent.exists():
                # like ssh(1): the directory of known_hosts (~/.ssh) is private
                self.known_hosts.parent.mkdir(parents=True, mode=0o700)
                os.chmod(self.known_hosts.parent, 0o700)
            self.known_hosts.touch(mode=0o600)
            self._load_host_keys(client)
        policy = paramiko.AutoAddPolicy() if self.trust_on_first_use else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)

        log.info("connecting to %s over SSH", self.name)
        try:
            self._conn.open()
        except paramiko.BadHostKeyException as exc:
            self._close_quietly()
            raise DeviceError(
                f"{self.name}: the host key CHANGED: the server offers a {exc.key.get_name()} key "
                f"with fingerprint SHA256:{_fingerprint(exc.key)}, but {self.known_hosts} records "
                f"another one for {self.host_key_name}. This may be an attack, so the connection "
                f"was refused. If the change is expected (device reinstalled), remove the old "
                f"entry with: ssh-keygen -R {shlex.quote(self.host_key_name)} -f "
                f"{shlex.quote(str(self.known_hosts))}"
            ) from None
        except paramiko.AuthenticationException as exc:
            self._close_quietly()
            raise DeviceError(
                f"{self.name}: SSH authentication failed ({exc}): the device accepted none of "
                f"the keys tried (key file, ssh-agent, ~/.ssh/id_*); give the right key file or "
                f"add the key to the agent"
            ) from None
        except paramiko.SSHException as exc:
            if "No authentication methods available" in str(exc):
                self._close_quietly()
                raise DeviceError(
                    f"{self.name}: SSH authentication failed: no key to offer (no key file, no "
                    f"ssh-agent, no ~/.ssh/id_*); give a key file or start an agent"
                ) from None
            if "not found in known_hosts" in str(exc):
                self._close_quietly()
                raise DeviceError(
                    f"{self.name}: unknown host key: {self.host_key_name} is not in "
                    f"{self.known_hosts}. Check the device's key and add it (e.g. ssh-keyscan "
                    f"-p {self.port} {shlex.quote(self.host)} >> "
                    f"{shlex.quote(str(self.known_hosts))}), or allow trust on first use"
                ) from None
            self._close_quietly()
            raise DeviceError(f"{self.name}: SSH connect failed: {exc}") from None
        except (OSError, EOFError) as exc:
            self._close_quietly()
            reason = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc)
            raise DeviceError(f"{self.name}: cannot connect over SSH: {reason}") from None
        transport = self._conn.client.get_transport()
        assert transport is not None
        transport.set_keepalive(5)
        if self._private_workdir:
            self.workdir = self._make_private_workdir()
            self._records.record(self.workdir)
            self._remove_leftovers()
        else:
            self._exec(f"mkdir -p {shlex.quote(self.workdir)}", self.connect_timeout, "create workdir")

    def _make_private_workdir(self) -> str:
        """`mktemp -d` on the device: a new 0700 directory no other user can have prepared."""
        script = 'd=$(mktemp -d "${TMPDIR:-/tmp}/minrt.XXXXXXXX") && chmod 700 "$d" && printf "%s\\n" "$d"'
        status, out, err = self._exec(script, self.connect_timeout, "create workdir")
        path = out.decode(errors="replace").strip()
        if status != 0 or not path.startswith("/"):
            self._close_quietly()
            raise DeviceError(f"{self.name}: cannot create a private work directory with mktemp -d: "
                              f"{err.decode(errors='replace').strip() or out.decode(errors='replace').strip()}")
        log.debug("%s: private work directory %s", self.name, path)
        return path

    def _remove_leftovers(self) -> None:
        """Remove the work directories earlier sessions left on this device (the device froze
        or died, or the harness was killed), and stop what still runs in them."""
        def remove(workdir: str) -> str | None:
            status, _, err = self._exec(remove_command(workdir), self.connect_timeout, f"remove {workdir}")
            return None if status == 0 else err.decode(errors="replace").strip()

        self._records.remove_stale(remove)

    def close(self) -> None:
        """Stop what still runs in the private workdir (a run cut short by Ctrl-C) and remove
        it; a device that does not answer keeps it until the next session to it."""
        if self._private_workdir and self.workdir:
            workdir, self.workdir = self.workdir, ""
            try:
                transport = self._conn.client.get_transport()
                if transport is not None and transport.is_active():
                    status, _, _ = self._exec(remove_command(workdir), self.connect_timeout, "remove workdir")
                    if status == 0:
                        self._records.forget(workdir)
            except DeviceError as exc:  # the device is gone: the next session removes it
                log.info("%s: could not remove %s: %s", self.name, workdir, exc)
        self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
            pass
        self._sftp = None
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "SSHTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transport(self, step: str) -> paramiko.Transport:
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise DeviceError(f"{self.name}: connection lost (before {step})")
        return transport

    def _remote_path(self, remote: str) -> str:
        return str(PurePosixPath(self.workdir) / remote)

    # -- commands -----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        """Run argv in workdir; every word is quoted for the remote shell."""
        if not argv:
            raise ValueError("run: empty argv")
        words = [str(word) for word in argv]
        # sh gets the workdir and argv as positional parameters, so no word is ever parsed as
        # script, whatever the user's login shell. It reports its pid (which exec keeps) so a
        # command that times out can be killed: without a pty, closing the channel does not.
        script = f'cd "$1" && shift && printf \'{_PID_TAG}%s\\n\' "$$" >&2 && exec "$@"'
        command = shlex.join(["sh", "-c", script, "sh", self.workdir, *words])
        step = f"run {words[0]}"
        try:
            status, out, err = self._exec(command, timeout, step)
        except _CommandTimeout as exc:
            pid = _pid_from(exc.stderr)
            if pid is not None:
                self._kill_quietly(pid)
            raise DeviceError(str(exc)) from None
        if err.startswith(_PID_TAG.encode()):
            err = err.split(b"\n", 1)[1] if b"\n" in err else b""
        return CommandResult(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def _kill_quietly(self, pid: int) -> None:
        # bounded like any short step (connect_timeout), not by 5 s: on a loaded host a kill
        # slower to reach an emulated board could be given up, leaving the command running
        try:
            self._exec(f"kill -KILL {pid}", self.connect_timeout, f"kill {pid}")
            log.info("%s: killed the timed-out command (pid %d)", self.name, pid)
        except DeviceError as exc:
            log.info("%s: could not kill the timed-out command (pid %d): %s", self.name, pid, exc)

    @contextlib.contextmanager
    def _watchdog(self, seconds: float, step: str) -> Iterator[None]:
        """Bound a paramiko call that has no timeout of its own (exec_command waits forever
        for a frozen server): when it expires the connection is closed, which ends the call."""
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            transport = self._conn.client.get_transport()
            if transport is not None:
                transport.close()

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError):
            if fired.is_set():
                raise DeviceError(f"{self.name}: {step}: no answer within {seconds:g} s; "
                                  f"connection closed") from None
            raise
        finally:
            timer.cancel()

    def _open_channel(self, transport: paramiko.Transport, timeout: float, step: str) -> paramiko.Channel:
        """A new session channel. The server may refuse one now and then (dropbear does, under
        load, right after another channel closed); nothing has run yet, so asking again is safe."""
        attempt = 1
        while True:
            try:
                return transport.open_session(timeout=timeout)
            except paramiko.SSHException as exc:  # incl. ChannelException: the open was refused
                if attempt == _CHANNEL_TRIES or not transport.is_active() or "Timeout" in str(exc):
                    raise DeviceError(f"{self.name}: {step}: cannot open a channel: {exc}") from None
                log.debug("%s: %s: channel refused (%s), asking again", self.name, step, exc)
                time.sleep(0.2 * attempt)
                attempt += 1
            except (OSError, EOFError) as exc:
                raise DeviceError(f"{self.name}: {step}: cannot open a channel: {exc}") from None

    def _exec(
        self, command: str, timeout: float, step: str, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run a shell command string (already quoted) and collect its output, bounded in time."""
        deadline = time.monotonic() + timeout
        transport = self._transport(step)
        channel = self._open_channel(transport, min(timeout, self.connect_timeout), step)
        out, err = bytearray(), bytearray()
        heartbeat = _Heartbeat(transport, HEARTBEAT_INTERVAL_S)
        try:
            channel.settimeout(_POLL_S)
            with self._watchdog(max(0.1, min(self.connect_timeout, deadline - time.monotonic())),
                                step):
                channel.exec_command(command)
            if stdin is not None:
                self._send_all(channel, stdin, deadline, step)
                channel.shutdown_write()
            while True:
                got = False
                while channel.recv_ready():
                    out += channel.recv(65536)
                    got = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    got = True
                # Done when the output ended (EOF) and the status came. Servers may send the
                # exit status before the last output (OpenSSH does): never stop at the status.
                finished = (channel.eof_received or channel.closed) and channel.status_event.is_set()
                if (finished or not transport.is_active()) and not got \
                        and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise _CommandTimeout(
                        f"{self.name}: {step}: no exit after {timeout:g} s (timeout)", bytes(err)
                    )
                if got:
                    heartbeat.heard()
                elif heartbeat.silent_for() > self.heartbeat_timeout:
                    # The connection is up but nothing answers: a frozen device. Closing the
                    # connection ends the heartbeat's wait; the next session cleans up.
                    silent = heartbeat.silent_for()
                    transport.close()
                    raise DeviceError(
                        f"{self.name}: {step}: the device stopped answering (no reply to the SSH "
                        f"heartbeat for {silent:.0f} s; frozen?); connection closed"
                    )
                if not got:
                    channel.status_event.wait(_POLL_S)
            # paramiko leaves exit_status at -1 when no exit-status message came: either the
            # connection died, or the command was killed by a signal (exit-signal, which
            # paramiko ignores) and the channel closed normally.
            if channel.exit_status == -1 and not transport.is_active():
                raise DeviceError(
                    f"{self.name}: {step}: connection lost before the command finished"
                )
            return channel.exit_status, bytes(out), bytes(err)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceError(f"{self.name}: {step}: connection lost: {exc}") from None
        finally:
            heartbeat.stop()
            channel.close()

    def _send_all(self, channel: paramiko.Channel, data: bytes, deadline: float, step: str) -> None:
        view = memoryview(data)
        while view:
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.name}: {step}: timed out sending data")
            if channel.closed or channel.exit_status_ready():
                # say why: the command's own error (e.g. "Text file busy") is on its stderr
                why = b""
                while channel.recv_stderr_ready():
                    why += channel.recv_stderr(65536)
                status = channel.exit_status if channel.exit_status_ready() else None
                detail = why.decode(errors="replace").strip() or f"exit status {status}"
                raise DeviceError(f"{self.name}: {step}: the remote side stopped reading ({detail})")
            if not channel.send_ready():
                time.sleep(_POLL_S)
                continue
            try:
                view = view[channel.send(view[:32768]) :]
            except socket.timeout:
                continue

    # -- files --------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient | None:
        """The SFTP session, or None when the server has no SFTP subsystem."""
        if self._sftp is None and not self._sftp_missing:
            transport = self._transport("open SFTP")
            channel = None
            try:
                channel = transport.open_session(timeout=self.connect_timeout)
                channel.settimeout(self.transfer_timeout)
                channel.invoke_subsystem("sftp")
                self._sftp = paramiko.SFTPClient(channel)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not self._transport_active():
                    raise DeviceError(f"{self.name}: open SFTP: connection lost: {exc}") from None
                log.debug("%s has no SFTP (%s): copying files with cat", self.name, exc)
                self._sftp_missing = True
                if channel is not None:
                    channel.close()
                # A round trip, so the server has handled that close before the next channel
                # opens (dropbear closed a channel opened during that window).
                barrier = threading.Thread(target=transport.global_request,
                                           args=("keepalive@openssh.com",), daemon=True)
                barrier.start()
                barrier.join(self.connect_timeout)
        return self._sftp

    def _transport_active(self) -> bool:
        transport = self._conn.client.get_transport()
        return transport is not None and transport.is_active()

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to the device, keeping its permission bits."""
        local = Path(local)
        path = self._remote_path(remote)
        mode = stat.S_IMODE(local.stat().st_mode)
        step = f"put {local.name} -> {path}"
        log.debug("%s: %s (%d bytes)", self.name, step, local.stat().st_size)
        self._exec(f"mkdir -p {shlex.quote(str(PurePosixPath(path).parent))}",
                   self.connect_timeout, step)
        sftp = self._sftp_client()
        if sftp is not None:
            try:
                sftp.put(str(local), path)
                sftp.chmod(path, mode)
                return
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise DeviceError(f"{self.name}: {step}: {_sftp_reason(exc)}") from None
        script = 'cat > "$1" && chmod "$2" "$1"'
        command = shlex.join(["sh", "-c", script, "sh", path, f"{mode:o}"])
        status, _, err = self._exec(command, self.transfer_timeout, step, stdin=local.read_bytes())
        if status != 0:
            raise DeviceError(f"{self.name}: {step}: {err.decode(errors='replace').strip()}")

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the device."""
        local = Path(local)
        path = self._remote_path(remote)
        step = f"get {path}"
        log.debug("%s: %s -> %s", self.name, step, local)
        sftp = self._sftp_client()
        if sftp is not None:
            try:
                sftp.get(path, str(local))
                return
            except (OSError, paramiko.SSHException, EOFError) as exc:
                local.unlink(missing_ok=True)  # no half-written or empty file left behind
                raise DeviceError(f"{self.name}: {step}: {_sftp_reason(exc)}") from None
        status, out, err = self._exec(f"cat {shlex.quote(path)}", self.transfer_timeout, step)
        if status != 0:
            raise DeviceError(f"{self.name}: {step}: {err.decode(errors='replace').strip()}")
        local.write_bytes(out)


class _Heartbeat:
    """While a command runs: a keepalive@openssh.com request with want-reply every `interval`
    seconds, in a thread of its own (paramiko waits for the reply without a timeout). Any
    answer (OpenSSH replies, dropbear refuses the request: both are answers) or output says
    the device is alive; `silent_for` is how long it has said nothing. paramiko's own
    keepalive wants no reply, so it notices nothing."""

    def __init__(self, transport: paramiko.Transport, interval: float) -> None:
        self._transport = transport
        self._interval = interval
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ssh-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self._interval):
            asked = time.monotonic()
            try:
                self._transport.global_request("keepalive@openssh.com", wait=True)
            except (paramiko.SSHException, OSError, EOFError):
                return
            if not self._transport.is_active():
                return
            self._last = max(self._last, asked)

    def heard(self) -> None:
        self._last = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self._last

    def stop(self) -> None:
        self._done.set()


_PID_TAG = "minrt-pid:"


class _CommandTimeout(DeviceError):
    def __init__(self, message: str, stderr: bytes) -> None:
        super().__init__(message)
        self.stderr = stderr


def _pid_from(stderr: bytes) -> int | None:
    first = stderr.split(b"\n", 1)[0]
    if first.startswith(_PID_TAG.encode()) and first[len(_PID_TAG):].isdigit():
        return int(first[len(_PID_TAG):])
    return None


def _sftp_reason(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == 2:
        return "no such file"
    return str(exc) or type(exc).__name__


def _fingerprint(key: paramiko.PKey) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


__all__ = ["SSHTransport", "DEFAULT_KNOWN_HOSTS"]


def split_address(address: str, default_user: str) -> tuple[str, str, int | None]:
    """'user@address[:port]' -> (user, address, port); an IPv6 address with a port is written
    in brackets, 'user@[::1]:2222' (a bare '::1' has no port). A bad port is a TargetError."""
    user, _, host = address.rpartition("@")
    port_text = None
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise TargetError(f"--host '{address}': an IPv6 address is written [ADDRESS] or [ADDRESS]:PORT")
        host, port_text = inside, (rest[1:] if rest else None)
    elif host.count(":") == 1:  # not an IPv6 literal
        host, _, port_text = host.partition(":")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TargetError(f"--host '{address}': port '{port_text}' is not a TCP port (1-65535)")
        port = int(port_text)
    if not host:
        raise TargetError(f"--host '{address}': no host name or address")
    return user or default_user, host, port


def _open_ssh(options: Mapping[str, Any], address: str | None, trust_on_first_use: bool) -> SSHTransport:
    address = address or options.get("host")
    if not address:
        raise TargetError("this target needs a device address: pass --host user@ADDRESS")
    user, host, port = split_address(address, options.get("user", "root"))
    port = port or int(options.get("port", 22))
    # no workdir option: a private one per connection (mktemp -d on the device), removed after
    return SSHTransport(host=host, port=port, user=user,
                        workdir=options.get("workdir"),
                        known_hosts=options.get("known_hosts"),
                        key_filename=options.get("key_file"),
                        trust_on_first_use=trust_on_first_use or bool(options.get("trust_on_first_use")))


TRANSPORT_KINDS = (
    TransportKind("ssh", "over SSH", _open_ssh, address="user@ADDRESS[:PORT]", board=True,
                  options={"host": str, "user": str, "port": int, "workdir": str, "known_hosts": str,
                           "key_file": str, "trust_on_first_use": bool}),
)

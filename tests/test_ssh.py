"""SSHTransport against a real OpenSSH server (`sshd -f own_config`) on 127.0.0.1, key-only auth."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.errors import DeviceError, TargetError
from harness.transport.ssh import SSHTransport

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

if not Path(SSHD).exists() or not shutil.which("ssh-keygen"):
    pytest.skip("OpenSSH server (sshd, ssh-keygen) is not installed: apt-get install "
                "openssh-server openssh-client", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "minrt-test", "-f",
                    str(path)], check=True)


class SSHServer:
    """One sshd on 127.0.0.1 with its own host key, config and authorized_keys."""

    def __init__(self, root: Path, sftp: bool = True, listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.root = root
        self.listen = listen
        self.port = free_port()
        self.sftp = sftp
        self.client_key = root / "client_ed25519"
        keygen(self.client_key)
        (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
        self.host_key = root / "host_ed25519"
        keygen(self.host_key)
        self.proc: subprocess.Popen | None = None

    def new_host_key(self) -> None:
        self.host_key.unlink()
        Path(f"{self.host_key}.pub").unlink()
        keygen(self.host_key)

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        config = self.root / "sshd_config"
        lines = [
            f"Port {self.port}", *(f"ListenAddress {a}" for a in self.listen), f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "UsePAM no",
            "StrictModes no", "LogLevel ERROR",
        ]
        if self.sftp:
            lines.append("Subsystem sftp internal-sftp")
        config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.monotonic() + 120  # liveness on a loaded host, not speed
        while time.monotonic() < deadline:
            family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
            with socket.socket(family) as s:
                if s.connect_ex((self.listen[0], self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of our listener)."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def transport(self, known_hosts: Path, **kw) -> SSHTransport:
        return SSHTransport("127.0.0.1", port=self.port, user="root", key_filename=self.client_key,
                            known_hosts=known_hosts, allow_agent=False,
                            workdir=str(self.root / "work"), **kw)

    def known_hosts_entry(self) -> str:
        return f"[127.0.0.1]:{self.port} " + " ".join(
            Path(f"{self.host_key}.pub").read_text().split()[:2]) + "\n"


@pytest.fixture
def server(tmp_path):
    srv = SSHServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def known(server, tmp_path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(server.known_hosts_entry())
    return path


def test_put_run_get_round_trip(server, known, tmp_path):
    script = tmp_path / "double.sh"
    script.write_text("#!/bin/sh\nsed 's/./&&/g' \"$1\" > \"$2\"\n")
    script.chmod(0o755)
    data = tmp_path / "in.txt"
    data.write_text("abc\n")
    with server.transport(known) as dev:
        dev.put(script, "bin/double.sh")
        dev.put(data, "in.txt")
        result = dev.run(["./bin/double.sh", "in.txt", "out.txt"], timeout=10)
        assert result.returncode == 0, result.stderr
        dev.get("out.txt", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "aabbcc\n"
    assert os.stat(server.root / "work" / "bin" / "double.sh").st_mode & 0o777 == 0o755


def test_exit_status_and_stderr_are_returned(server, known):
    with server.transport(known) as dev:
        result = dev.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_hostile_arguments_arrive_verbatim(server, known, tmp_path):
    canary = tmp_path / "pwned"
    hostile = ["a b", "it's", '"double"', f"$(touch {canary})", f"; touch {canary}",
               f"`touch {canary}`", "*", "back\\slash", "tab\there", "-n", "", "$HOME", "a\nb"]
    with server.transport(known) as dev:
        result = dev.run(["printf", "[%s]\\n", *hostile], timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"[{word}]\n" for word in hostile)
    assert not canary.exists()


def test_unknown_host_key_is_refused_by_default(server, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(DeviceError, match=r"unknown host key: \[127\.0\.0\.1\]:\d+ is not in"):
        server.transport(empty)
    with pytest.raises(DeviceError, match="unknown host key"):
        server.transport(tmp_path / "does_not_exist")
    assert not (tmp_path / "does_not_exist").exists()


def test_trust_on_first_use_records_the_key(server, tmp_path):
    path = tmp_path / "tofu" / "known_hosts"
    with server.transport(path, trust_on_first_use=True) as dev:
        assert dev.run(["true"], timeout=10).returncode == 0
    recorded = path.read_text().split()
    assert recorded[0] == f"[127.0.0.1]:{server.port}"
    assert recorded[1:3] == Path(f"{server.host_key}.pub").read_text().split()[:2]
    with server.transport(path) as dev:  # now known: strict verification passes
        assert dev.run(["true"], timeout=10).returncode == 0


@pytest.mark.parametrize("tofu", [False, True])
def test_changed_host_key_is_refused_with_advice(server, known, tofu):
    server.stop()
    server.new_host_key()
    server.start()
    with pytest.raises(DeviceError) as info:
        server.transport(known, trust_on_first_use=tofu)
    message = str(info.value)
    assert "host key CHANGED" in message
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}' -f {known}" in message
    assert known.read_text() != server.known_hosts_entry()  # nothing was overwritten


def sleepers(arg: str) -> list[int]:
    """Pids of running `sleep ARG` processes."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == f"sleep\0{arg}\0".encode():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_command_timeout_raises_device_error_and_kills_the_command(server, known):
    arg = f"{100 + os.getpid() % 1000}.5"  # a sleep nobody else runs
    with server.transport(known) as dev:
        start = time.monotonic()
        with pytest.raises(DeviceError, match=r"run sleep: no exit after 1 s \(timeout\)"):
            dev.run(["sleep", arg], timeout=1)
        # It returned long before the command would have ended, and the connection is usable.
        assert time.monotonic() - start < 60
        assert dev.run(["echo", "alive"], timeout=10).stdout == "alive\n"
    deadline = time.monotonic() + 60  # the kill is sent; the kernel reaps in its own time
    while sleepers(arg) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers(arg) == [], "the timed-out command is still running on the device"


def test_cut_connection_mid_command_raises_device_error(server, known):
    errors: list[BaseException] = []
    with server.transport(known) as dev:
        def run() -> None:
            try:
                dev.run(["sleep", "120"], timeout=120)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                errors.append(exc)

        worker = threading.Thread(target=run)
        start = time.monotonic()
        worker.start()
        time.sleep(1.0)
        sessions = server.session_pids()
        assert sessions, "no sshd session process found"
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        worker.join(60)
        assert not worker.is_alive(), "run() hung after the connection was cut"
        assert time.monotonic() - start < 60
        with pytest.raises(DeviceError, match=r"root@127\.0\.0\.1:\d+: connection lost"):
            dev.run(["true"], timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], DeviceError), errors
    assert f"127.0.0.1:{server.port}" in str(errors[0]) and "run sleep" in str(errors[0])


def test_agent_authentication(server, known, tmp_path, monkeypatch):
    """No key file: the key comes from a real ssh-agent."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        deadline = time.monotonic() + 120  # liveness on a loaded host, not speed
        while time.monotonic() < deadline:  # `ssh-add -l` exits 2 until the agent listens
            if subprocess.run(["ssh-add", "-l"], env=env, capture_output=True).returncode != 2:
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", "-q", str(server.client_key)], env=env, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* keys to fall back on
        with SSHTransport("127.0.0.1", port=server.port, known_hosts=known,
                          workdir=str(tmp_path / "work")) as dev:
            assert dev.run(["echo", "via-agent"], timeout=10).stdout == "via-agent\n"
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(DeviceError, match="SSH authentication failed"):
            SSHTransport("127.0.0.1", port=server.port, known_hosts=known)
    finally:
        agent.terminate()
        agent.wait(10)


def test_wrong_client_key_is_refused(server, known, tmp_path):
    stranger = tmp_path / "stranger_ed25519"
    keygen(stranger)
    with pytest.raises(DeviceError, match=r"root@127\.0\.0\.1:\d+: SSH authentication failed"):
        SSHTransport("127.0.0.1", port=server.port, key_filename=stranger, known_hosts=known,
                     allow_agent=False)


def test_missing_remote_file_is_a_clear_error(server, known, tmp_path):
    with server.transport(known) as dev:
        with pytest.raises(DeviceError, match=r"get .*/work/nope\.bin: no such file"):
            dev.get("nope.bin", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_files_travel_without_sftp_through_cat(tmp_path):
    srv = SSHServer(tmp_path, sftp=False)
    srv.start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(srv.known_hosts_entry())
        blob = tmp_path / "blob.bin"
        payload = bytes(range(256)) * 4096 + b"\n\x00end"  # 1 MiB + binary tail
        blob.write_bytes(payload)
        blob.chmod(0o640)
        with srv.transport(known) as dev:
            dev.put(blob, "sub dir/blob 'q'.bin")
            assert dev._sftp_missing, "the server has no SFTP: the cat fallback must be used"
            dev.get("sub dir/blob 'q'.bin", tmp_path / "back.bin")
            with pytest.raises(DeviceError, match="No such file"):
                dev.get("nope", tmp_path / "nope")
        assert (tmp_path / "back.bin").read_bytes() == payload
        assert os.stat(tmp_path / "work" / "sub dir" / "blob 'q'.bin").st_mode & 0o777 == 0o640
    finally:
        srv.stop()


def test_nothing_listening_is_a_clear_error(tmp_path):
    port = free_port()
    with pytest.raises(DeviceError, match=rf"root@127\.0\.0\.1:{port}: cannot connect over SSH"):
        SSHTransport("127.0.0.1", port=port, known_hosts=tmp_path / "k", allow_agent=False,
                     connect_timeout=5)


@pytest.mark.parametrize("port", [99999, 65536, 0, -22])
def test_port_out_of_range_is_refused_before_connecting(tmp_path, port):
    # 99999 used to wrap to 16 bits and connect to port 34463
    with pytest.raises(TargetError, match=rf"SSH port {port} of 127\.0\.0\.1 is out of range \(1-65535\)"):
        SSHTransport("127.0.0.1", port=port, known_hosts=tmp_path / "k", allow_agent=False)


def test_trust_on_first_use_creates_a_private_ssh_directory(server, tmp_path):
    ssh_dir = tmp_path / "home" / ".ssh"
    old_umask = os.umask(0o022)  # the usual umask, which gives 0755 directories
    try:
        with server.transport(ssh_dir / "known_hosts", trust_on_first_use=True) as dev:
            assert dev.run(["true"], timeout=10).returncode == 0
    finally:
        os.umask(old_umask)
    assert ssh_dir.stat().st_mode & 0o777 == 0o700
    assert (ssh_dir / "known_hosts").stat().st_mode & 0o777 == 0o600


def private_transport(server: SSHServer, known: Path) -> SSHTransport:
    """A transport with the default workdir: a private directory made on the device."""
    return SSHTransport("127.0.0.1", port=server.port, user="root", key_filename=server.client_key,
                        known_hosts=known, allow_agent=False)


def test_default_workdir_is_private_per_connection_and_removed(server, known, tmp_path):
    # Another user of the device prepared the old fixed workdir with their own minrt-run.
    planted = Path("/tmp/minrt")
    existed = planted.exists()
    with private_transport(server, known) as first, private_transport(server, known) as second:
        workdirs = [Path(first.workdir), Path(second.workdir)]
        assert workdirs[0] != workdirs[1] and planted not in workdirs
        for workdir in workdirs:
            info = workdir.stat()
            assert info.st_mode & 0o777 == 0o700 and info.st_uid == os.getuid()
        script = tmp_path / "where.sh"
        script.write_text("#!/bin/sh\npwd\n")
        script.chmod(0o755)
        first.put(script, "where.sh")
        assert first.run(["./where.sh"], timeout=10).stdout.strip() == first.workdir
    assert not any(w.exists() for w in workdirs), "the private workdirs were not removed"
    assert planted.exists() == existed


def test_an_ipv6_address_with_a_port_is_written_in_brackets(tmp_path):
    """`--host root@[::1]:PORT` reaches a real sshd listening on IPv6 loopback (the brackets
    were taken for part of the host name); malformed brackets and ports are one clear error."""
    from harness.errors import TargetError
    from harness.transport import transport_kind
    from harness.transport.ssh import split_address

    assert split_address("pi@[::1]:2222", "root") == ("pi", "::1", 2222)
    assert split_address("[fe80::1]", "root") == ("root", "fe80::1", None)
    assert split_address("::1", "root") == ("root", "::1", None)
    for bad, needle in [("[::1", "written [ADDRESS]"), ("[::1]2222", "written [ADDRESS]"),
                        ("[::1]:0", "port '0'"), ("[]:22", "no host")]:
        with pytest.raises(TargetError, match=re.escape(needle)):
            split_address(bad, "root")
    server = SSHServer(tmp_path, listen=("::1",))
    server.start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(f"[::1]:{server.port} " + " ".join(Path(f"{server.host_key}.pub").read_text().split()[:2]) + "\n")
        options = {"key_file": str(server.client_key), "known_hosts": str(known), "workdir": str(tmp_path / "work")}
        with transport_kind("ssh").open(options, f"root@[::1]:{server.port}", False) as dev:
            assert dev.run(["echo", "over", "ipv6"], timeout=10).stdout.strip() == "over ipv6"
    finally:
        server.stop()

"""A corrupt known_hosts line is bad input (issue 22 #5): paramiko raises InvalidHostKey (a bare
Exception) or ValueError for a key it cannot decode, which reached the CLI as 'internal error',
exit 3. Real paramiko, real files; the connection is never attempted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.errors import TargetError
from harness.transport.ssh import SSHTransport

BAD_LINES = [
    "127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB",  # bad base64 padding: InvalidHostKey
    "127.0.0.1 ssh-ed25519 AAAA!!notbase64",  # InvalidHostKey
    "127.0.0.1 ssh-rsa AAAAB3NzaC1yc2E=",  # a key too short: ValueError
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_a_corrupt_known_hosts_line_is_a_target_error(tmp_path: Path, line: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(line + "\n")
    with pytest.raises(TargetError, match="not a valid known_hosts file"):
        SSHTransport(host="127.0.0.1", port=1, user="root", known_hosts=known)  # connects


def test_a_corrupt_known_hosts_line_through_the_cli_is_exit_2(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(BAD_LINES[0] + "\n")
    target = tmp_path / "pi.toml"
    text = (REPO_ROOT / "targets" / "rpi.toml").read_text()
    target.write_text(text.replace("[transport]", f'[transport]\nknown_hosts = "{known}"', 1)
                      .replace('name = "rpi"', 'name = "pi"', 1))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "mlp", "--target", str(target),
                           "--toolchain", "host", "--host", "root@127.0.0.1:1"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a valid known_hosts file" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_work_directories_of_dead_sessions_are_stale_and_live_ones_are_not(tmp_path, monkeypatch):
    """The host's record of device work directories (harness.transport.workdirs): a directory
    recorded by a process that has ended is stale (the next session removes it), one of a
    live process is not (another harness may be using it right now), and a record that does
    not name a minrt.* directory is dropped, never handed to `rm -rf`."""
    from harness.transport.workdirs import WorkdirRecords

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "cache"))
    mine = WorkdirRecords("root@127.0.0.1:2222")
    mine.record("/tmp/minrt.LIVE1234")
    # a real process that records a directory and exits
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from harness.transport.workdirs import WorkdirRecords; "
            "WorkdirRecords('root@127.0.0.1:2222').record('/tmp/minrt.DEAD5678')")
    subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], env=dict(os.environ, MINRT_CACHE=str(tmp_path / "cache")),
                   check=True)
    assert mine.directory is not None
    (mine.directory / "1-1.evil").write_text("/etc")
    assert [workdir for _, workdir in mine.stale()] == ["/tmp/minrt.DEAD5678"]
    assert not (mine.directory / "1-1.evil").exists()
    # another device's records are its own
    assert WorkdirRecords("serial /dev/ttyUSB0").stale() == []
    mine.forget("/tmp/minrt.LIVE1234")
    assert [workdir for _, workdir in mine.stale()] == ["/tmp/minrt.DEAD5678"]
    assert len(list(mine.directory.iterdir())) == 1
    # removal (both transports' remove_stale): a failure keeps the record for the next session,
    # a success drops it; here the device is this host's shell, on a directory made for it
    mine.remove_stale(lambda workdir: "device busy")
    assert [workdir for _, workdir in mine.stale()] == ["/tmp/minrt.DEAD5678"]
    Path("/tmp/minrt.DEAD5678").mkdir(exist_ok=True)

    def remove(workdir: str) -> str | None:
        from harness.transport.workdirs import remove_command

        done = subprocess.run(["sh", "-c", remove_command(workdir)], capture_output=True, text=True)
        return None if done.returncode == 0 else done.stderr

    mine.remove_stale(remove)
    assert not Path("/tmp/minrt.DEAD5678").exists() and mine.stale() == []

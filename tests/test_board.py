"""The emulated ARMv7 board: built from Debian's armhf packages, booted under qemu-system-arm,
reached over SSH (dropbear) and its serial console. A fresh machine downloads ~50 MB of .debs
once (cached by recipe hash); a boot takes ~10 s of emulation."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from harness import REPO_ROOT
from harness.device.board import READY_MARKER, Board, board_status, build_board_image, ensure_board, recipe_for, stop_board
from harness.errors import DeviceError

INSTANCE = f"pytest-{os.getpid()}"  # a board of its own: these tests kill it

missing = [tool for tool in ("qemu-system-arm", "dpkg-deb", "apt-get", "dropbearkey")
           if shutil.which(tool) is None]
if missing:
    pytest.skip(f"the emulated board needs {', '.join(missing)} (ci/setup installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def board():
    board = ensure_board(instance=INSTANCE, boot_timeout=300)
    yield board
    stop_board(instance=INSTANCE)
    shutil.rmtree(board.run_dir, ignore_errors=True)


def test_image_is_cached_by_recipe_hash():
    recipe = recipe_for("qemu-virt-armv7")
    image = build_board_image(recipe=recipe)
    assert image.dir.name == f"qemu-virt-armv7-{recipe.key()}"
    manifest = image.manifest
    assert manifest["kernel_release"].endswith("-armmp")
    assert f"linux-image-{manifest['kernel_release']}" in manifest["packages"]
    assert {"virtio_mmio", "virtio_net", "net_failover"} <= set(manifest["modules"])
    assert manifest["modules"].index("net_failover") < manifest["modules"].index("virtio_net")
    assert build_board_image(recipe=recipe).dir == image.dir  # second call: the cached image
    # The image's keys: host key known to the harness, client key private to the cache.
    assert image.host_public_key.startswith("ssh-ed25519 ")
    assert image.client_key.stat().st_mode & 0o077 == 0


def test_an_image_cached_with_open_modes_is_made_private(tmp_path):
    """Images built before the key files were private are fixed when next used."""
    image = build_board_image()
    os.chmod(image.initrd, 0o644)
    os.chmod(image.dir, 0o755)
    assert build_board_image().dir == image.dir
    assert image.initrd.stat().st_mode & 0o777 == 0o600
    assert image.dir.stat().st_mode & 0o777 == 0o700
    assert image.dir.parent.stat().st_mode & 0o777 == 0o700


def test_boot_timeout_names_what_did_not_come_up(tmp_path):
    board = Board(build_board_image(), tmp_path / "slow-board")
    with pytest.raises(DeviceError) as info:
        board.start(timeout=1.5)
    message = str(info.value)
    assert "the console READY marker did not come up within 1.5 s" in message
    assert "Last console lines:" in message
    assert not board.is_running()  # the half-booted qemu was killed


def test_board_is_armv7_over_ssh(board):
    with board.transport() as dev:
        result = dev.run(["uname", "-m"], timeout=30)
    assert (result.returncode, result.stdout) == (0, "armv7l\n")


def test_put_and_get_round_trip(board, tmp_path):
    payload = os.urandom(300_000)
    local = tmp_path / "blob.bin"
    local.write_bytes(payload)
    with board.transport() as dev:
        dev.put(local, "dir with space/blob.bin")
        result = dev.run(["sha256sum", "dir with space/blob.bin"], timeout=60)
        dev.get("dir with space/blob.bin", tmp_path / "back.bin")
    assert result.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "back.bin").read_bytes() == payload


def test_static_arm_binary_runs(board, tmp_path):
    cc = shutil.which("arm-linux-gnueabihf-gcc")
    if cc is None:
        pytest.skip("arm-linux-gnueabihf-gcc is not installed (ci/setup installs it)")
    source = tmp_path / "hello.c"
    source.write_text(
        '#include <stdio.h>\n#include <stdlib.h>\n'
        'int main(int argc, char **argv) {\n'
        '  float acc = 0.0f;\n'
        '  for (int i = 1; i < argc; i++) acc += (float)atof(argv[i]);\n'
        '  printf("argc=%d sum=%.2f last=[%s]\\n", argc, acc, argv[argc - 1]);\n'
        '  return argc == 4 ? 0 : 5;\n}\n')
    binary = tmp_path / "hello"
    subprocess.run([cc, "-static", "-O2", "-mfloat-abi=hard", "-o", str(binary), str(source)],
                   check=True)
    with board.transport() as dev:
        dev.put(binary, "hello")
        ok = dev.run(["./hello", "1.5", "2.25", "3 $(x)"], timeout=60)
        failing = dev.run(["./hello"], timeout=60)
    assert (ok.returncode, ok.stdout) == (0, "argc=4 sum=6.75 last=[3 $(x)]\n")
    assert failing.returncode == 5


def test_wrong_host_key_is_refused(board, tmp_path):
    host, port, user, key, _ = board.ssh_params()
    other = build_board_image().dir / "client_ed25519.pub"  # any ed25519 key that is not the host's
    known = tmp_path / "known_hosts"
    known.write_text(f"[{host}]:{port} " + " ".join(other.read_text().split()[:2]) + "\n")
    from harness.transport.ssh import SSHTransport

    with pytest.raises(DeviceError, match="host key CHANGED.*ssh-keygen -R"):
        SSHTransport(host, port=port, user=user, key_filename=key, known_hosts=known,
                     allow_agent=False)


def test_serial_console_runs_commands(board):
    with socket.socket(socket.AF_UNIX) as console:
        console.settimeout(10)
        console.connect(str(board.console_socket))
        console.settimeout(1.0)
        console.sendall(b"echo console-$((6 * 7))-ok\n")
        seen = b""
        deadline = time.monotonic() + 120  # liveness: the emulated board is slow on a loaded host
        while b"console-42-ok\r\n" not in seen and time.monotonic() < deadline:
            try:
                seen += console.recv(4096)
            except socket.timeout:
                pass
    assert b"console-42-ok\r\n" in seen, seen
    assert READY_MARKER in board.console_log.read_text(errors="replace")


NOBODY = 65534


def as_another_user(argv: list[str]) -> subprocess.CompletedProcess:
    """Run argv (system tools: the venv may sit in a private home) as user nobody: what any
    other local user could do."""
    return subprocess.run(argv, user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                          text=True, timeout=60, cwd="/")


def test_keys_and_console_are_private_to_this_user(board):
    """The initrd holds the host private key the harness pins; the console is a root shell.
    Both are this user's alone, and another local user is refused for real."""
    image = board.image
    for path in (image.initrd, image.client_key):
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in (image.dir, image.dir.parent, board.run_dir, board.console_socket.parent):
        assert path.stat().st_mode & 0o777 == 0o700, path
    assert board.console_socket.stat().st_mode & 0o777 == 0o600
    assert "host=127.0.0.1,port=" not in " ".join(board._qemu_argv())  # no TCP console
    if os.geteuid() != 0:
        pytest.skip("checking what another user can open needs root (to become nobody)")
    read_key = as_another_user(["head", "-c", "1", str(image.initrd)])
    assert read_key.returncode != 0 and "Permission denied" in read_key.stderr, read_key
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (ci/setup installs it): cannot try the console as nobody")
    console = as_another_user(["socat", "-u", "/dev/null", f"UNIX-CONNECT:{board.console_socket}"])
    assert console.returncode != 0 and "Permission denied" in console.stderr, console


def test_timeout_kills_the_command_on_the_board(board):
    with board.transport() as dev:
        with pytest.raises(DeviceError, match=r"run sleep: no exit after 2 s \(timeout\)"):
            dev.run(["sleep", "301"], timeout=2)
        left = dev.run(["sh", "-c", "ps -o args | grep -c '^sleep 301$' || true"], timeout=30)
    assert left.stdout.strip() == "0", "the timed-out command still runs on the board"


def test_frozen_board_gives_an_error_not_a_hang(board):
    with board.transport() as dev:
        os.kill(board.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(DeviceError, match=rf"127\.0\.0\.1:{board.ssh_port}: run true"):
                dev.run(["true"], timeout=3)
            assert time.monotonic() - start < 60
        finally:
            os.kill(board.pid, signal.SIGCONT)
    with board.transport() as dev:  # thawed: usable again
        assert dev.run(["echo", "back"], timeout=30).stdout == "back\n"


def test_running_board_is_reused(board):
    again = ensure_board(instance=INSTANCE)
    assert (again.pid, again.ssh_port, again.console_socket) == (
        board.pid, board.ssh_port, board.console_socket)
    status = board_status(instance=INSTANCE)
    assert status["state"] == "up" and status["pid"] == board.pid


def test_pytest_plugin_gives_a_suite_the_board(board, tmp_path):
    """`pytest --minrt-target FILE` hands the suite's tests a `minrt_device` on the target."""
    rpi_qemu = (REPO_ROOT / "targets" / "rpi-qemu.toml").read_text()
    target_file = tmp_path / "board-under-test.toml"
    target_file.write_text(
        rpi_qemu.replace('name = "rpi-qemu"', 'name = "board-under-test"').replace(
            "[transport]\n", f'[transport]\nboard_instance = "{INSTANCE}"\n'))
    (tmp_path / "test_on_device.py").write_text(
        "def test_machine(minrt_target, minrt_device):\n"
        "    assert minrt_target.name == 'board-under-test'\n"
        "    result = minrt_device.run(['uname', '-m'], timeout=30)\n"
        "    assert result.stdout == 'armv7l\\n', result\n"
        "def test_fails_on_purpose(minrt_device):\n"
        "    assert minrt_device.run(['false'], timeout=30).returncode == 0\n")
    registered = any(ep.value == "harness.pytest_plugin"
                     for ep in importlib.metadata.entry_points(group="pytest11"))
    load = [] if registered else ["-p", "harness.pytest_plugin"]  # not yet pip-installed
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *load, "-p", "no:cacheprovider",
         "-q", "--minrt-target", str(target_file), str(tmp_path / "test_on_device.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "test_fails_on_purpose" in proc.stdout
    assert ensure_board(instance=INSTANCE).pid == board.pid  # the plugin reused the board


def test_killed_board_fails_the_command_then_a_new_board_boots(board):
    errors: list[BaseException] = []
    with board.transport() as dev:
        def run() -> None:
            try:
                dev.run(["sleep", "120"], timeout=120)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(2.0)
        os.kill(board.pid, signal.SIGKILL)
        worker.join(60)
        assert not worker.is_alive(), "run() hung after the board was killed"
    assert len(errors) == 1 and isinstance(errors[0], DeviceError), errors
    assert f"127.0.0.1:{board.ssh_port}" in str(errors[0]) and "run sleep" in str(errors[0])
    assert board_status(instance=INSTANCE)["state"] == "down"

    fresh = ensure_board(instance=INSTANCE, boot_timeout=300)
    assert fresh.pid != board.pid
    with fresh.transport() as dev:
        assert dev.run(["uname", "-m"], timeout=30).stdout == "armv7l\n"


def test_the_first_run_on_a_fresh_board_connects_once(board, tmp_path, caplog):
    """Opening a board target's SSH transport boots the board when it is down; the SSH
    connection that proved the boot ready is the one the run gets, not a second connection
    right after (the first model on a new board logged "connecting ... over SSH" twice and
    paid for two handshakes on the emulated CPU). The handed-over connection has its own
    private work directory, removed on close; a board booted without asking keeps nothing."""
    import logging

    from harness.config.targets import load_target
    from harness.device.open import open_transport

    stop_board(instance=INSTANCE)
    target_file = tmp_path / "rpi-qemu.toml"
    target_file.write_text((REPO_ROOT / "targets" / "rpi-qemu.toml").read_text().replace(
        "[transport]\n", f'[transport]\nboard_instance = "{INSTANCE}"\n'))
    caplog.set_level(logging.INFO)
    with open_transport(load_target(str(target_file))) as dev:
        assert dev.run(["uname", "-m"], timeout=30).stdout == "armv7l\n"
        workdir = dev.workdir
    messages = [r.getMessage() for r in caplog.records]
    assert any("booting" in m for m in messages), messages  # a fresh boot, not the running board
    # The probe that proved the board up is the run's connection: no connection after it. (The
    # boot's probe itself may need a second try while a loaded host's emulated board is still
    # starting dropbear: each try says "connecting", all before "up in".)
    (up,) = [i for i, m in enumerate(messages) if m.startswith("board ") and ": up in " in m]
    connecting = [i for i, m in enumerate(messages) if m.startswith("connecting to ") and m.endswith(" over SSH")]
    assert connecting and max(connecting) < up, messages
    fresh = ensure_board(instance=INSTANCE)
    assert fresh.take_connection() is None  # the running board: no probe, nothing kept
    with fresh.transport() as dev:
        assert dev.workdir != workdir
        assert dev.run(["test", "-e", workdir], timeout=30).returncode != 0  # removed on close


def test_stop_powers_the_board_off():
    board = ensure_board(instance=INSTANCE, boot_timeout=300)
    assert stop_board(instance=INSTANCE) is True
    assert not board.is_running()
    assert board_status(instance=INSTANCE)["state"] == "down"
    # A clean power-off, not a kill: the kernel said so on the console.
    assert "reboot: Power down" in board.console_log.read_text(errors="replace")
    assert stop_board(instance=INSTANCE) is False


def test_a_board_asked_for_other_cores_boots_again_with_them():
    """The CPU count is a boot option (-smp): a caller that asks none reuses whatever board
    runs; one that asks for other cores than the running board has gets it booted again with
    them. (The default board's cores, rpi-qemu's `board_cores`: test_threads.)"""
    one = ensure_board(instance=INSTANCE, cores=1, boot_timeout=300)
    try:
        assert ensure_board(instance=INSTANCE).pid == one.pid
        assert ensure_board(instance=INSTANCE, cores=1).pid == one.pid
        assert board_status(instance=INSTANCE)["cores"] == 1
        with one.transport() as dev:
            assert dev.run(["nproc"], timeout=30).stdout == "1\n"
        two = ensure_board(instance=INSTANCE, cores=2, boot_timeout=300)
        assert two.pid != one.pid and not one.is_running()
        assert board_status(instance=INSTANCE)["cores"] == 2
        with two.transport() as dev:
            assert dev.run(["nproc"], timeout=30).stdout == "2\n"
    finally:
        stop_board(instance=INSTANCE)

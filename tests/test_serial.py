"""The serial path: frame encoding/decoding, the runner's `--serial` mode over real ptys
(socat, and a noise-injecting relay of our own), SerialTransport over a real busybox ash on a
pty, and over the emulated ARMv7 board's console."""

from __future__ import annotations

import os
import random
import re
import stat
import select
import shutil
import signal
import subprocess
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from harness.formats import frames
from harness.errors import DeviceError, RunnerError
from harness.formats.frames import Frame, Kind
from harness.transport.base import CommandResult
from harness.transport.serial import SerialTransport

BUSYBOX = shutil.which("busybox")
SOCAT = shutil.which("socat")


# ---------------------------------------------------------------------------------------------
# frames: every kind, both directions, round trip and corruption
# ---------------------------------------------------------------------------------------------

def all_frames(payload_len: int = 24) -> list[Frame]:
    rng = random.Random(payload_len)
    return [
        Frame(kind, seq=rng.randrange(256), payload=rng.randbytes(payload_len), from_device=dev)
        for kind in Kind
        for dev in (False, True)
    ]


@pytest.mark.parametrize("size", [0, 1, 100, frames.MAX_PAYLOAD])
def test_round_trip_every_kind(size: int) -> None:
    sent = all_frames(size)
    wire = b"".join(frames.encode(f) for f in sent)
    assert frames.Decoder().feed(wire) == sent
    # the same bytes trickling in one at a time
    dec = frames.Decoder()
    got = [f for b in wire for f in dec.feed(bytes([b]))]
    assert got == sent
    assert dec.stats.skipped_bytes == 0 and dec.stats.bad_crc == 0


def test_encode_rejects_what_cannot_be_framed() -> None:
    with pytest.raises(frames.FrameError, match="exceeds"):
        frames.encode(Frame(Kind.PUT, 1, bytes(frames.MAX_PAYLOAD + 1)))
    with pytest.raises(frames.FrameError, match="not a byte"):
        frames.encode(Frame(Kind.ACK, 256))


@pytest.mark.parametrize("frame", all_frames(), ids=lambda f: f"{f.kind.name}-{'dev' if f.from_device else 'host'}")
def test_every_single_bit_flip_is_detected(frame: Frame) -> None:
    wire = frames.encode(frame)
    good = frames.encode(Frame(Kind.ACK, 7, b"next", from_device=True))
    for bit in range(len(wire) * 8):
        damaged = bytearray(wire)
        damaged[bit // 8] ^= 1 << (bit % 8)
        dec = frames.Decoder()
        # the damaged frame never comes out; the frame after it always does
        assert dec.feed(bytes(damaged) + good) == [frames.Decoder().feed(good)[0]], f"bit {bit}"
        assert dec.stats.bad_header + dec.stats.bad_crc + dec.stats.skipped_bytes > 0


@pytest.mark.parametrize("frame", all_frames(40)[::3], ids=lambda f: f.kind.name)
def test_truncated_frames_never_decode_and_the_next_frame_does(frame: Frame) -> None:
    wire = frames.encode(frame)
    good = frames.encode(Frame(Kind.NAK, 9, from_device=True))
    for cut in range(1, len(wire)):
        dec = frames.Decoder()
        assert dec.feed(wire[:cut]) == []
        # a cut frame whose header survived swallows what follows until its claimed length
        # is reached and its CRC fails: the sender's retransmissions then come through
        got: list[Frame] = []
        for _ in range(len(wire) // len(good) + 2):
            got += dec.feed(good)
        assert got and {f.kind for f in got} == {Kind.NAK}, f"cut at {cut}"


def test_garbage_between_frames_is_skipped() -> None:
    rng = random.Random(5)
    sent = all_frames(50)
    noise = [
        b"\r\n# \x1b[6n",                                   # a busybox prompt with its cursor query
        b"[   12.345678] virtio_net: link up\r\n",          # a kernel message on the console
        frames.MAGIC + b"\x03\x01\xff\xff\x00\x00",         # a fake header with a huge length
        frames.MAGIC * 3,
        bytes([0xA5]),
        rng.randbytes(300),
    ]
    wire = b""
    for i, f in enumerate(sent):
        wire += noise[i % len(noise)] + frames.encode(f)
    dec = frames.Decoder()
    got = []
    for i in range(0, len(wire), 37):  # arbitrary read boundaries
        got += dec.feed(wire[i : i + 37])
    assert got == sent
    assert dec.stats.skipped_bytes >= sum(len(n) for n in noise)


def test_bad_length_is_rejected_without_waiting_for_the_payload() -> None:
    import struct
    import zlib

    head = struct.pack("<BBH", Kind.PUT, 1, frames.MAX_PAYLOAD + 1)
    fake = frames.MAGIC + head + struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    dec = frames.Decoder()
    assert dec.feed(fake) == []
    assert dec.stats.bad_header == 1
    assert len(dec.buf) < frames.HEADER.size  # nothing is held back waiting for 4 KiB


def test_damaged_payload_counts_for_a_nak() -> None:
    wire = bytearray(frames.encode(Frame(Kind.PUT, 3, b"x" * 64)))
    wire[20] ^= 0x10
    dec = frames.Decoder()
    assert dec.feed(bytes(wire)) == []
    assert dec.stats.bad_crc == 1 and dec.take_damaged() == 1 and dec.take_damaged() == 0


def test_payload_helpers() -> None:
    assert frames.parse_hello(bytes([1]) + (4096).to_bytes(2, "little") + b"minrt") == (1, 4096, "minrt")
    assert frames.parse_get((10).to_bytes(4, "little") + b"abc") == (10, b"abc")
    for short in (frames.parse_hello, frames.parse_get):
        with pytest.raises(frames.FrameError, match="too short"):
            short(b"\x01")
    assert frames.put_payload(frames.Blob.PARAMS, 8, 20, b"zz") == bytes([1]) + (8).to_bytes(4, "little") + (20).to_bytes(4, "little") + b"zz"


# ---------------------------------------------------------------------------------------------
# The device side: a runner serving `--serial` on a real pty
# ---------------------------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    not (BUSYBOX and SOCAT and shutil.which("gcc")),
    reason="needs busybox, socat and gcc (apt-get install busybox-static socat gcc)",
)


class Model:
    """A runner binary for this host and one model's artifact blobs + the expected outputs."""

    def __init__(self, runner: Path, graph: bytes, params: bytes, inputs: bytes,
                 expected: Callable[[bytes], None]) -> None:
        self.runner, self.graph, self.params, self.inputs = runner, graph, params, inputs
        self.check = expected


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return _build_model(tmp_path_factory.mktemp("serial-model"))


def _build_model(tmp: Path) -> Model:
    """The real runner (minrt + runner + the mlp example's kernels compiled by apache-tvm)
    for x86_64, the mlp's blobs, and a check against onnx's reference executor."""
    from harness.formats import tensorfile
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.models.examples import write_examples
    from harness.check.reference import run_reference
    from harness.config.targets import load_target
    from harness.build.toolchain import HostToolchain

    onnx_path = write_examples(tmp, ["mlp"])["mlp"]
    artifact = compile_model(onnx_path, "x86_64")
    runner = build_runner(load_target("x86_64"), artifact, HostToolchain(), out_dir=tmp)
    rng = np.random.default_rng(0)
    feeds = {
        spec["name"]: rng.standard_normal(spec["shape"]).astype(spec["dtype"])
        for spec in artifact.inputs
    }
    reference = run_reference("onnx-reference", onnx_path, feeds)

    def check(outputs_blob: bytes) -> None:
        got = list(tensorfile.loads(outputs_blob, "outputs from the serial runner").values())
        assert len(got) == len(artifact.outputs) == len(reference)
        for g, want in zip(got, reference):
            np.testing.assert_allclose(g, want, atol=1e-5, rtol=1e-5)

    return Model(runner, artifact.graph_json.read_bytes(), artifact.params_bin.read_bytes(),
                 tensorfile.dumps(feeds), check)


class Relay:
    """Two pty pairs joined by a thread: the host opens `host_path`, the device `device_path`.
    `corrupt(direction, data)` may alter every chunk in flight ("h2d" or "d2h"); `on_bytes`
    sees the running byte count (to kill the device mid-transfer)."""

    def __init__(self, corrupt: Callable[[str, bytes], bytes] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.hm, self.hs = os.openpty()
        self.dm, self.ds = os.openpty()
        tty.setraw(self.hs)
        self.host_path, self.device_path = os.ttyname(self.hs), os.ttyname(self.ds)
        self.corrupt = corrupt or (lambda d, b: b)
        self.on_bytes = on_bytes or (lambda n: None)
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        route = {self.hm: (self.dm, "h2d"), self.dm: (self.hm, "d2h")}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(route), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                out, direction = route[fd]
                self.count += len(data)
                self.on_bytes(self.count)
                data = self.corrupt(direction, data)
                try:
                    os.write(out, data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for fd in (self.hm, self.hs, self.dm, self.ds):
            os.close(fd)


def start_device(runner: Path, device_path: str) -> subprocess.Popen:
    return subprocess.Popen([str(runner), "--serial", device_path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_device(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """The device's exit status and stderr, once it exits (killed after `timeout`: liveness on
    a loaded host; a runner told BYE exits within about a second)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


@needs_tools
def test_session_over_socat_pty_pair(model: Model, tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    socat = subprocess.Popen([SOCAT, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        host = SerialTransport(str(a), ack_timeout=0.5)  # open before the device talks
        device = start_device(model.runner, str(b))
        try:
            outputs, timing = host.exchange(model.graph, model.params, model.inputs, iters=5,
                                            workspace=0, timeout=60)
        finally:
            code, err = finish_device(device)
            host.close()
        assert code == 0, err
        model.check(outputs)
        assert timing["iters"] == 5 and timing["min_us"] <= timing["mean_us"] <= timing["max_us"]
        assert timing["arena_bytes"] > 0
    finally:
        socat.terminate()
        socat.wait(10)


@needs_tools
def test_device_restores_its_terminal(model: Model) -> None:
    relay = Relay()
    try:
        before = termios.tcgetattr(relay.ds)
        assert before[3] & termios.ECHO  # a fresh pty is cooked: the runner must make it raw
        host = SerialTransport(relay.host_path, ack_timeout=0.5)
        device = start_device(model.runner, relay.device_path)
        host.exchange(model.graph, model.params, model.inputs, iters=1, workspace=0, timeout=60)
        code, err = finish_device(device)
        host.close()
        assert code == 0, err
        assert termios.tcgetattr(relay.ds) == before
        # and when killed by a signal in the middle of a session
        device = start_device(model.runner, relay.device_path)
        # raw while serving: once it is, the runner's signal handlers are in place too (it
        # installs them first). Waited for, not slept: a loaded host may start it late.
        deadline = time.monotonic() + 60
        while termios.tcgetattr(relay.ds) == before:
            assert device.poll() is None and time.monotonic() < deadline, "the runner never made its line raw"
            time.sleep(0.02)
        device.send_signal(signal.SIGTERM)
        code, _ = finish_device(device)
        assert code == 128 + signal.SIGTERM
        assert termios.tcgetattr(relay.ds) == before
    finally:
        relay.close()


@needs_tools
def test_device_gives_the_line_back_when_the_host_vanishes(model: Model) -> None:
    """No host ever speaks: the runner exits by itself after its idle timeout (shortened
    here through MINRT_SERIAL_IDLE_S), with status 1, a message, and its terminal restored."""
    relay = Relay()
    try:
        before = termios.tcgetattr(relay.ds)
        started = time.monotonic()
        device = subprocess.Popen([str(model.runner), "--serial", relay.device_path],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env={**os.environ, "MINRT_SERIAL_IDLE_S": "2"})
        code, err = finish_device(device, timeout=20)
        assert code == 1 and "link lost" in err, (code, err)
        assert 1.5 < time.monotonic() - started < 10
        assert termios.tcgetattr(relay.ds) == before
    finally:
        relay.close()


def bit_flipper(rate: float, seed: int = 1, garbage: bool = True) -> Callable[[str, bytes], bytes]:
    """Flips one bit in a `rate` share of the chunks in both directions, and sometimes
    inserts a burst of garbage (which may contain the frame magic)."""
    rng = random.Random(seed)

    def corrupt(direction: str, data: bytes) -> bytes:
        if not data or rng.random() >= rate:
            return data
        out = bytearray(data)
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
        if garbage and rng.random() < 0.5:
            burst = rng.randbytes(rng.randrange(1, 40)) + frames.MAGIC
            out[i:i] = burst
        return bytes(out)

    return corrupt


@needs_tools
def test_noise_is_survived_by_retransmission(model: Model) -> None:
    relay = Relay(corrupt=bit_flipper(0.25))
    try:
        host = SerialTransport(relay.host_path, ack_timeout=0.3, retries=12, chunk=256)
        device = start_device(model.runner, relay.device_path)
        try:
            outputs, timing = host.exchange(model.graph, model.params, model.inputs, iters=2,
                                            workspace=0, timeout=120)
        finally:
            code, err = finish_device(device)
            host.close()
        assert code == 0, err
        model.check(outputs)
        assert host.stats["retransmissions"] > 0  # the noise did hit, and was recovered from
        print(f"noise: {host.stats}")
    finally:
        relay.close()


@needs_tools
@pytest.mark.parametrize("after_handshake", [False, True], ids=["from-start", "after-handshake"])
def test_noise_that_never_stops_ends_with_device_error(model: Model, after_handshake: bool) -> None:
    flip = bit_flipper(1.0, garbage=False)
    seen = {"h2d": 0}

    def corrupt(direction: str, data: bytes) -> bytes:
        # after the handshake: the host's HELLO and its answer go through, nothing after
        if after_handshake and direction == "h2d":
            seen["h2d"] += 1
        if after_handshake and seen["h2d"] <= 1:
            return data
        return flip(direction, data)

    relay = Relay(corrupt=corrupt)
    device = None
    try:
        host = SerialTransport(relay.host_path, ack_timeout=0.3, retries=5, startup_timeout=3)
        device = start_device(model.runner, relay.device_path)
        started = time.monotonic()
        expected = "no valid answer to PUT" if after_handshake else "did not start its serial session"
        with pytest.raises(DeviceError, match=expected) as info:
            host.exchange(model.graph, model.params, model.inputs, iters=1, workspace=0, timeout=60)
        elapsed = time.monotonic() - started
        host.close()
        assert relay.host_path in str(info.value)
        assert elapsed < 10  # bounded by the retry budget, far below the session timeout
        print(f"noise forever: DeviceError after {elapsed:.1f} s: {info.value}")
    finally:
        if device:
            device.kill()
            finish_device(device)
        relay.close()


@needs_tools
def test_device_killed_mid_transfer_ends_with_device_error(model: Model) -> None:
    holder: dict[str, subprocess.Popen] = {}

    def kill_after(count: int) -> None:
        dev = holder.get("device")
        if dev and count > len(model.params) // 2 and dev.poll() is None:
            dev.kill()

    relay = Relay(on_bytes=kill_after)
    try:
        host = SerialTransport(relay.host_path, ack_timeout=0.3, retries=5, chunk=256)
        holder["device"] = start_device(model.runner, relay.device_path)
        started = time.monotonic()
        with pytest.raises(DeviceError, match="stopped answering"):
            host.exchange(model.graph, model.params, model.inputs, iters=1, workspace=0, timeout=60)
        elapsed = time.monotonic() - started
        host.close()
        assert holder["device"].wait(5) == -signal.SIGKILL
        print(f"device killed: DeviceError after {elapsed:.1f} s")
    finally:
        finish_device(holder["device"])
        relay.close()


@needs_tools
def test_runner_error_comes_back_as_runner_error(model: Model) -> None:
    relay = Relay()
    try:
        host = SerialTransport(relay.host_path, ack_timeout=0.5)
        device = start_device(model.runner, relay.device_path)
        bad_graph = model.graph.replace(b'"nodes"', b'"nodez"', 1)
        try:
            with pytest.raises(RunnerError, match="runner: .*") as info:
                host.exchange(bad_graph, model.params, model.inputs, iters=1, workspace=0, timeout=30)
        finally:
            device.kill()
            finish_device(device)
            host.close()
        print(f"runner error: {info.value}")
    finally:
        relay.close()


def test_run_model_documents_the_errors_it_raises() -> None:
    """The farm retries a DeviceError on another device, never a RunnerError: run_model's
    contract names the class the code raises for a runner's refusal (the test above)."""
    doc = " ".join(SerialTransport.run_model.__doc__.split())
    assert "Raises RunnerError when the runner answers with an error" in doc, doc
    assert "DeviceError on a runner error" not in doc, doc


def test_close_line_closes_the_port_and_writes_nothing() -> None:
    """Firmware transports end a UART session with close_line() (SerialTransport's own, where
    they used to reach into its port): the line is closed and no shell command is typed."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        line = SerialTransport(os.ttyname(slave))
        line.close_line()
        line.close()  # closed already: nothing more to do either
        assert not select.select([master], [], [], 0.2)[0]  # nothing was written to the line
    finally:
        os.close(master)
        os.close(slave)
    harness_dir = Path(__file__).resolve().parent.parent / "harness"
    reaching_in = [f"{p.relative_to(harness_dir)}:{n}" for p in harness_dir.rglob("*.py")
                   for n, text in enumerate(p.read_text().splitlines(), 1)
                   if re.search(r"(?<!self)\._port\b", text)]
    assert not reaching_in, reaching_in


def raw_exchange(port, dec: frames.Decoder, frame: Frame, timeout: float = 30.0) -> Frame:
    """Send one request on a pyserial port and return the device's answer to it (the timeout
    is liveness on a loaded host: an answer normally comes in milliseconds)."""
    port.write(frames.encode(frame))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in dec.feed(port.read(4096)):
            if f.from_device and f.seq == frame.seq and f.kind != Kind.BUSY:
                return f
    raise AssertionError(f"no answer to {frame}")


@needs_tools
def test_hostile_requests_get_errors_and_the_device_keeps_serving(model: Model) -> None:
    """Well-framed but wrong requests (bad blob ids, sizes, offsets, order) each get an
    ERROR naming the problem; random bytes get nothing; a clean session works afterwards."""
    import serial

    B = frames.Blob
    put = frames.put_payload
    hostile = [
        (Frame(Kind.PUT, 1, put(B.OUTPUTS, 0, 4, b"abcd")), "bad blob id"),
        (Frame(Kind.PUT, 2, b"\x00\x01"), "short payload"),
        (Frame(Kind.PUT, 3, put(B.GRAPH, 0, 1 << 31, b"{")), "larger than 64 MiB"),
        (Frame(Kind.PUT, 4, put(B.PARAMS, 100, 200, b"x")), "out of order"),
        (Frame(Kind.PUT, 5, put(B.GRAPH, 0, 10, b"y" * 20)), "past the blob's end"),
        (Frame(Kind.RUN, 6, frames.run_payload(1, 0)), "was not sent completely"),
        (Frame(Kind.RUN, 7, b"\x01"), "must be 8 bytes"),
        (Frame(Kind.GET, 8, frames.get_payload(B.OUTPUTS, 0, 100)), "no outputs"),
        (Frame(Kind.GET, 9, bytes([9]) + bytes(6)), "bad blob id"),
        (Frame(Kind.PUT, 10, put(B.GRAPH, 0, 4, b"{}  ")), None),
        (Frame(Kind.GET, 11, frames.get_payload(B.GRAPH, 5, 100)), "offset past"),
        (Frame(Kind.ACK, 12), "not a request kind"),
        (Frame(Kind.PUT, 13, put(B.PARAMS, 0, 0, b"")), None),
        (Frame(Kind.PUT, 14, put(B.INPUTS, 0, 0, b"")), None),
        (Frame(Kind.RUN, 15, frames.run_payload(0, 0)), "iters must be at least 1"),
        (Frame(Kind.RUN, 16, frames.run_payload(1, 0)), "load: "),
    ]
    relay = Relay()
    device = start_device(model.runner, relay.device_path)
    try:
        with serial.serial_for_url(relay.host_path, timeout=0.05) as port:
            dec = frames.Decoder()
            deadline = time.monotonic() + 60  # the announcement: the device's tty is raw now
            while not any(f.kind == Kind.HELLO for f in dec.feed(port.read(4096))):
                assert time.monotonic() < deadline, "no HELLO announcement"
            raw_exchange(port, dec, Frame(Kind.HELLO, 200, bytes([frames.VERSION])))
            port.write(random.Random(9).randbytes(100_000))  # noise: no answer, no crash
            for request, error in hostile:
                answer = raw_exchange(port, dec, request)
                if error is None:
                    assert answer.kind == Kind.ACK, answer
                else:
                    assert answer.kind == Kind.ERROR and error in answer.payload.decode(), (request, answer)
        host = SerialTransport(relay.host_path, ack_timeout=0.5)
        outputs, _ = host.exchange(model.graph, model.params, model.inputs, iters=1, workspace=0, timeout=60)
        host.close()
        model.check(outputs)
        code, err = finish_device(device)
        assert code == 0, err
    finally:
        device.kill()
        relay.close()


# ---------------------------------------------------------------------------------------------
# SerialTransport over a real busybox ash on a pty: the board's console without the board
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def console(tmp_path: Path):
    """busybox ash, interactive, on a pty made by socat; yields the host end's path."""
    link = tmp_path / "console"
    proc = subprocess.Popen(
        [SOCAT, "-d", "-d", f"pty,raw,echo=0,link={link}",
         f"EXEC:{BUSYBOX} sh -i,pty,stderr,setsid,ctty,sane"],
        stderr=subprocess.PIPE, cwd=tmp_path,
    )
    deadline = time.monotonic() + 10
    while not link.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield str(link)
    proc.terminate()
    proc.wait(10)


@needs_tools
def test_default_workdir_is_private_per_connection_and_removed(console: str, tmp_path: Path) -> None:
    """No workdir given: mktemp -d on the device (0700), never a fixed /tmp path another user
    could prepare; removed when the connection closes."""
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload")
    with SerialTransport(console) as dev:
        workdir = Path(dev.workdir)
        assert workdir.parent == Path("/tmp") and workdir.name.startswith("minrt."), workdir
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        dev.put(src, "f.bin")
        assert (workdir / "f.bin").read_bytes() == b"payload"
        assert dev.run(["pwd"], timeout=10).stdout.strip() == str(workdir)
    assert not workdir.exists()


@needs_tools
def test_shell_run_put_get(console: str, tmp_path: Path) -> None:
    with SerialTransport(console, workdir=str(tmp_path / "wd")) as dev:
        r = dev.run(["echo", "two words", "it's $HOME; `x`"], timeout=10)
        assert (r.returncode, r.stdout, r.stderr) == (0, "two words it's $HOME; `x`\n", "")
        r = dev.run(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=10)
        assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
        r = dev.run(["printf", "no newline"], timeout=10)
        assert r.stdout == "no newline"
        blob = random.Random(3).randbytes(100_000)
        src = tmp_path / "blob.bin"
        src.write_bytes(blob)
        dev.put(src, "sub/blob.bin")
        assert (tmp_path / "wd" / "sub" / "blob.bin").read_bytes() == blob
        back = tmp_path / "back.bin"
        dev.get("sub/blob.bin", back)
        assert back.read_bytes() == blob
        with pytest.raises(DeviceError, match="did not finish within"):
            dev.run(["sleep", "30"], timeout=1)
        # the console is usable again after a timeout
        assert dev.run(["echo", "again"], timeout=10).stdout == "again\n"
        with pytest.raises(DeviceError, match="exit 1"):
            dev.get("no/such/file", back)
        with pytest.raises(DeviceError, match="longer than the console shell reads"):
            dev.run(["echo", "x" * 2000], timeout=10)
        # a command that reads stdin gets /dev/null, not the console's next input
        assert dev.run(["cat"], timeout=10) == CommandResult(0, "", "")
        # compressible files go xz-packed (busybox unxz) and arrive identical; a file already
        # there is not sent again
        text = b"".join(b"line %d of a compressible file\n" % i for i in range(20_000))
        src.write_bytes(text)
        dev.put(src, "text.bin")
        assert (tmp_path / "wd" / "text.bin").read_bytes() == text
        mtime = (tmp_path / "wd" / "text.bin").stat().st_mtime_ns
        dev.put(src, "text.bin")
        assert (tmp_path / "wd" / "text.bin").stat().st_mtime_ns == mtime


@needs_tools
def test_run_model_through_the_shell(console: str, model: Model, tmp_path: Path) -> None:
    # a long startup timeout, so that "without waiting" (for the runner's HELLO) is a bound
    # far from it: < 30 s on a loaded host, against the 120 s a wait for HELLO would take
    with SerialTransport(console, workdir=str(tmp_path / "wd"), startup_timeout=120) as dev:
        dev.put(model.runner, "minrt-run")
        outputs, timing = dev.run_model(f"{tmp_path}/wd/minrt-run", model.graph, model.params,
                                        model.inputs, iters=3, workspace=0, timeout=60)
        model.check(outputs)
        assert timing["iters"] == 3
        # the shell is back, with its terminal settings, after the session
        assert dev.run(["echo", "back"], timeout=10).stdout == "back\n"
        # a runner that cannot start is reported with the shell's words, without waiting
        started = time.monotonic()
        with pytest.raises(DeviceError, match=r"runner exited with status 127 .*not found"):
            dev.run_model(f"{tmp_path}/wd/no-such-runner", model.graph, model.params,
                          model.inputs, iters=1, workspace=0, timeout=300)
        assert time.monotonic() - started < 30
        assert dev.run(["echo", "still"], timeout=10).stdout == "still\n"


@needs_tools
def test_slow_run_is_not_mistaken_for_a_dead_device(model: Model) -> None:
    """A RUN much longer than the host's whole retry budget completes: the runner says BUSY
    every second. Then the same long run with the device killed midway ends in seconds."""
    run_sent = threading.Event()
    host_frames = frames.Decoder()

    def watch(direction: str, data: bytes) -> bytes:
        if direction == "h2d" and any(f.kind == Kind.RUN for f in host_frames.feed(data)):
            run_sent.set()
        return data

    relay = Relay(corrupt=watch)
    try:
        host = SerialTransport(relay.host_path, ack_timeout=0.3, retries=3)
        device = start_device(model.runner, relay.device_path)
        _, timing = host.exchange(model.graph, model.params, model.inputs, iters=50, workspace=0, timeout=60)
        iters = int(3.0e6 / max(timing["mean_us"], 0.01))  # ~3 s of runs: > 0.9 s budget
        assert finish_device(device)[0] == 0
        device = start_device(model.runner, relay.device_path)
        outputs, timing = host.exchange(model.graph, model.params, model.inputs, iters=iters,
                                        workspace=0, timeout=120)
        model.check(outputs)
        assert timing["iters"] == iters
        print(f"slow run: {iters} iterations, {timing['mean_us'] * iters / 1e6:.1f} s")
        code, err = finish_device(device)
        assert code == 0, err

        device = start_device(model.runner, relay.device_path)
        run_sent.clear()

        def kill_during_run() -> None:
            # 1.5 s into the RUN (which lasts ~30 s), not 1.5 s after the start: on a loaded
            # host that could land before the RUN was sent ("no valid answer to PUT")
            if run_sent.wait(600):
                time.sleep(1.5)
                device.kill()

        threading.Thread(target=kill_during_run, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(DeviceError, match="no valid answer to RUN"):
            host.exchange(model.graph, model.params, model.inputs, iters=iters * 10, workspace=0,
                          timeout=300)
        elapsed = time.monotonic() - started
        assert elapsed < 30, "a dead device must be noticed long before the run's timeout"
        print(f"device killed during RUN: DeviceError after {elapsed:.1f} s")
        finish_device(device)
        host.close()
    finally:
        relay.close()


# ---------------------------------------------------------------------------------------------
# The emulated ARMv7 board's real console (qemu-system-arm, busybox ash on ttyAMA0)
# ---------------------------------------------------------------------------------------------

needs_board = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None,
    reason="the emulated board needs qemu-system-arm (apt-get install qemu-system-arm)",
)


class TcpRelay:
    """127.0.0.1:port <-> the board's console socket (a unix socket), through `corrupt`
    like Relay."""

    def __init__(self, console_socket: Path, corrupt: Callable[[str, bytes], bytes]) -> None:
        import socket

        self.corrupt = corrupt
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.upstream = socket.socket(socket.AF_UNIX)
        self.upstream.settimeout(10)
        self.upstream.connect(str(console_socket))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        self.server.settimeout(10)
        client, _ = self.server.accept()
        route = {client: (self.upstream, "h2d"), self.upstream: (client, "d2h")}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(route), [], [], 0.05)
            for sock in ready:
                data = sock.recv(4096)
                if not data:
                    return
                out, direction = route[sock]
                out.sendall(self.corrupt(direction, data))
        client.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.upstream.close()
        self.server.close()


class ProtocolNoise:
    """Bit flips in the chunks that carry frames (they hold the magic bytes; shell text never
    does), so the shell commands around a session go through clean."""

    def __init__(self, rate: float, seed: int = 2) -> None:
        self.flip = bit_flipper(rate, seed, garbage=False)
        self.active = True

    def __call__(self, direction: str, data: bytes) -> bytes:
        if self.active and frames.MAGIC in data:
            return self.flip(direction, data)
        return data


@pytest.fixture(scope="module")
def board_model(tmp_path_factory: pytest.TempPathFactory):
    """The board (the shared instance unless MINRT_TEST_BOARD_INSTANCE says otherwise), and
    the ARM runner for the mlp example with its blobs and reference outputs."""
    from harness.formats import tensorfile
    from harness.device.board import ensure_board
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.models.examples import write_examples
    from harness.check.reference import run_reference
    from harness.config.targets import load_target
    from harness.build.toolchain import HostToolchain

    tmp = tmp_path_factory.mktemp("serial-board")
    board = ensure_board(instance=os.environ.get("MINRT_TEST_BOARD_INSTANCE", "0"))
    target = load_target("rpi-qemu")
    onnx_path = write_examples(tmp, ["mlp"])["mlp"]
    artifact = compile_model(onnx_path, target)
    runner = build_runner(target, artifact, HostToolchain())
    feeds = {s["name"]: np.random.default_rng(1).standard_normal(s["shape"]).astype(s["dtype"])
             for s in artifact.inputs}
    reference = run_reference("onnx-reference", onnx_path, feeds)

    def check(outputs_blob: bytes) -> None:
        got = list(tensorfile.loads(outputs_blob, "outputs from the board").values())
        assert len(got) == len(reference)
        for g, want in zip(got, reference):
            np.testing.assert_allclose(g, want, atol=1e-5, rtol=1e-5)

    return board, Model(runner, artifact.graph_json.read_bytes(), artifact.params_bin.read_bytes(),
                        tensorfile.dumps(feeds), check)


@needs_board
def test_board_console_put_and_run_model(board_model) -> None:
    board, model = board_model
    with SerialTransport(board.console_url) as dev:
        assert dev.run(["uname", "-m"], timeout=30).stdout.strip() == "armv7l"
        dev.run(["rm", "-f", "minrt-run"], timeout=30)
        started = time.monotonic()
        dev.put(model.runner, "minrt-run")  # the runner reaches the board through the console
        put_s = time.monotonic() - started
        started = time.monotonic()
        outputs, timing = dev.run_model(f"{dev.workdir}/minrt-run", model.graph, model.params,
                                        model.inputs, iters=10, workspace=0, timeout=120)
        run_s = time.monotonic() - started
        model.check(outputs)
        assert timing["iters"] == 10 and timing["mean_us"] > 0
        print(f"board console: put {model.runner.stat().st_size} bytes in {put_s:.1f} s, "
              f"run_model in {run_s:.1f} s, on-device mean {timing['mean_us']:.1f} us")


@needs_board
def test_board_console_noise(board_model) -> None:
    """Noise on the board's real console line: a run that recovers, then noise that never
    stops (a clear DeviceError), then the console serves again once the line is clean."""
    board, model = board_model
    noise = ProtocolNoise(0.2)
    relay = TcpRelay(board.console_socket, noise)
    try:
        with SerialTransport(f"socket://127.0.0.1:{relay.port}", ack_timeout=1.0, retries=10, chunk=512) as dev:
            dev.put(model.runner, "minrt-run")
            outputs, _ = dev.run_model(f"{dev.workdir}/minrt-run", model.graph, model.params,
                                       model.inputs, iters=2, workspace=0, timeout=300)
            model.check(outputs)
            assert dev.stats["retransmissions"] > 0
            print(f"board noise: recovered with {dev.stats}")

            noise.flip = bit_flipper(1.0, garbage=False)
            with pytest.raises(DeviceError, match="no valid answer|did not start"):
                dev.run_model(f"{dev.workdir}/minrt-run", model.graph, model.params, model.inputs,
                              iters=1, workspace=0, timeout=120)
            noise.active = False
            started = time.monotonic()
            assert dev.run(["echo", "usable"], timeout=30).stdout == "usable\n"
            print(f"board noise: console usable again after {time.monotonic() - started:.1f} s")
    finally:
        relay.close()


@needs_tools
def test_console_cut_mid_run_ends_with_device_error(model: Model, tmp_path: Path) -> None:
    """The console reached as socket:// (as the board's is): cutting the connection while
    the runner works ends run_model at once with a DeviceError, not at its timeout."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    console = subprocess.Popen(
        [SOCAT, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
         f"EXEC:{BUSYBOX} sh -i,pty,stderr,setsid,ctty,sane"],
        stderr=subprocess.DEVNULL, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # until socat listens (the first connection is the one it serves)
            try:
                dev = SerialTransport(f"socket://127.0.0.1:{port}", workdir=str(tmp_path / "wd"))
                break
            except DeviceError:
                assert time.monotonic() < deadline, "socat did not listen"
                time.sleep(0.05)
        dev.put(model.runner, "minrt-run")
        threading.Timer(2.0, console.terminate).start()
        started = time.monotonic()
        with pytest.raises(DeviceError, match="console line failed|cannot write"):
            dev.run_model(f"{tmp_path}/wd/minrt-run", model.graph, model.params, model.inputs,
                          iters=10**9, workspace=0, timeout=300)
        elapsed = time.monotonic() - started
        assert elapsed < 10
        print(f"console cut: DeviceError after {elapsed:.1f} s")
        dev.close()
    finally:
        console.terminate()
        console.wait(10)


def test_unix_socket_console_missing_or_closed_is_a_device_error(tmp_path):
    """The emulated board's console is a unix socket (`unix://PATH`, pyserial has no such URL):
    a missing socket and a console that hangs up are clear DeviceErrors, not hangs."""
    import socket

    missing = tmp_path / "nothing.sock"
    with pytest.raises(DeviceError, match=rf"serial unix://{missing}: cannot open the console"):
        SerialTransport(f"unix://{missing}")
    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    try:
        dev = SerialTransport(f"unix://{path}", sync_timeout=5)
        peer, _ = server.accept()
        peer.close()  # the console hangs up before answering
        with pytest.raises(DeviceError, match="the console line failed|cannot write to the console"):
            dev.run(["true"], timeout=5)
        dev.close()
    finally:
        server.close()

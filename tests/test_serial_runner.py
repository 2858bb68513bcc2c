"""`minrt-run --serial` against a hostile line (issue 9, item 8), over real ptys with the
real runner: line noise that never stops does not keep it alive (idle time is wall time
since the last valid request), and a request reusing the last sequence number with other
content is executed, not answered from the reply cache."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from harness.formats import frames
from harness.formats.frames import Frame, Kind
from test_serial import Model, Relay, _build_model, finish_device, needs_tools, raw_exchange, start_device


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return _build_model(tmp_path_factory.mktemp("serial-runner-model"))


def wait_hello(port, dec: frames.Decoder, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout  # the announcement: the device's tty is raw now
    while not any(f.kind == Kind.HELLO for f in dec.feed(port.read(4096))):
        assert time.monotonic() < deadline, "no HELLO announcement"


@needs_tools
@pytest.mark.parametrize("after_handshake", [False, True])
def test_endless_line_noise_does_not_keep_the_runner_alive(model: Model, after_handshake: bool) -> None:
    """Random bytes every 50 ms (the line is never quiet for the 500 ms poll tick), no valid
    request: the runner still gives the line back after its idle time (2 s here), with
    status 1 and its message."""
    import serial

    relay = Relay()
    stop = threading.Event()
    device = None
    try:
        env = {**os.environ, "MINRT_SERIAL_IDLE_S": "2"}
        import subprocess

        with serial.serial_for_url(relay.host_path, timeout=0.05) as port:
            device = subprocess.Popen([str(model.runner), "--serial", relay.device_path],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env)
            dec = frames.Decoder()
            wait_hello(port, dec)
            if after_handshake:
                assert raw_exchange(port, dec, Frame(Kind.HELLO, 7, bytes([frames.VERSION]))).kind == Kind.HELLO
            rng = random.Random(5)

            def noise() -> None:
                while not stop.is_set():
                    port.write(bytes(b for b in rng.randbytes(64) if b != 0xA5))  # never a frame
                    time.sleep(0.05)

            started = time.monotonic()
            thread = threading.Thread(target=noise, daemon=True)
            thread.start()
            code, err = finish_device(device, timeout=30)
            elapsed = time.monotonic() - started
            stop.set()
            thread.join()
        assert code == 1 and "link lost" in err, (code, err)
        assert elapsed < 10, f"the runner lived {elapsed:.1f} s under noise"
    finally:
        stop.set()
        if device is not None:
            device.kill()
        relay.close()


@needs_tools
def test_same_seq_other_content_is_a_new_request(model: Model) -> None:
    """The reply cache answers a repeated request (same seq, same content) without running it
    again, but a request with the last seq and another kind or payload runs."""
    import serial

    B = frames.Blob
    relay = Relay()
    device = start_device(model.runner, relay.device_path)
    try:
        with serial.serial_for_url(relay.host_path, timeout=0.05) as port:
            dec = frames.Decoder()
            wait_hello(port, dec)
            raw_exchange(port, dec, Frame(Kind.HELLO, 200, bytes([frames.VERSION])))
            first = Frame(Kind.PUT, 1, frames.put_payload(B.GRAPH, 0, 8, b"{}  "))
            second = Frame(Kind.PUT, 2, frames.put_payload(B.GRAPH, 4, 8, b"    "))
            assert raw_exchange(port, dec, first).kind == Kind.ACK
            assert raw_exchange(port, dec, second).kind == Kind.ACK
            # the same request again (its ACK was lost): the cached ACK, not a second
            # execution (which would be an out-of-order chunk)
            again = raw_exchange(port, dec, second)
            assert again.kind == Kind.ACK and again.payload == b"", again
            # seq 2 again, another kind: a GET, answered with the blob
            get = raw_exchange(port, dec, Frame(Kind.GET, 2, frames.get_payload(B.GRAPH, 0, 100)))
            assert get.kind == Kind.ACK and frames.parse_get(get.payload) == (8, b"{}      "), get
            # seq 2 again, a PUT with other content: executed (here: out of order, an ERROR)
            other = raw_exchange(port, dec, Frame(Kind.PUT, 2, frames.put_payload(B.GRAPH, 2, 8, b"x")))
            assert other.kind == Kind.ERROR and "out of order" in other.payload.decode(), other
            assert raw_exchange(port, dec, Frame(Kind.BYE, 3)).kind == Kind.ACK
        code, err = finish_device(device)
        assert code == 0, err
    finally:
        device.kill()
        relay.close()

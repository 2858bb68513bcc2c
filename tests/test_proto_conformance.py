"""The framed protocol's conformance: one table of cases run against both C sides of it, the
Linux runner (`minrt-run --serial`, built by the harness for x86_64, over a pty pair) and the
firmware (cortex-m4-qemu under qemu-system-arm, over its UART), both serving the multi_io
example (two inputs, two outputs). The same request gets the same answer kind and ErrorCode
from both: repeats, corruption, limits, names, duplicates, truncated frames. Both sides use
runtime_c/proto; this holds them (and frames.py, the specification) to one behaviour.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness import REPO_ROOT
from harness.formats import frames, tensorfile
from harness.formats.frames import Blob, ErrorCode, Frame, Kind

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm is not installed"),
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (run ci/setup)"),
]
MODEL = "multi_io"


@dataclass
class Side:
    """One device under test: raw bytes in and out, and how to hand it a model."""

    name: str
    write: Callable[[bytes], None]
    read: Callable[[float], bytes]
    model_blobs: list[tuple[Blob, bytes]]  # what selects/loads the model on this device
    max_payload: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        self.decoder = frames.Decoder()
        self.held: list[Frame] = []

    def frames_for(self, wait: float) -> list[Frame]:
        got, self.held = self.held + self.decoder.feed(self.read(wait)), []
        return [f for f in got if f.from_device]

    def wait_hello_announcement(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(f.kind == Kind.HELLO and f.seq == 0 for f in self.frames_for(0.1)):
                return
        raise AssertionError(f"{self.name}: no HELLO announcement within {timeout} s")

    def send(self, frame: Frame) -> None:
        self.write(frames.encode(frame))

    def answer(self, seq: int, timeout: float = 30.0) -> Frame | None:
        """The device's answer to seq (BUSY skipped), or None after timeout (liveness on a
        loaded host; a check that no answer comes gives its own, shorter, timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in self.frames_for(0.1):
                if f.seq == seq and f.kind != Kind.BUSY:
                    return f
        return None

    def request(self, kind: Kind, payload: bytes = b"", seq: int | None = None) -> Frame:
        if seq is None:
            self.seq = self.seq % 250 + 1
            seq = self.seq
        self.send(Frame(kind, seq, payload))
        got = self.answer(seq)
        assert got is not None, f"{self.name}: no answer to {kind.name} seq {seq}"
        return got

    def hello(self) -> None:
        reply = self.request(Kind.HELLO, bytes([frames.VERSION]))
        version, self.max_payload, _ = frames.parse_hello(reply.payload)
        assert reply.kind == Kind.HELLO and version == frames.VERSION, reply

    def put(self, blob: Blob, data: bytes) -> Frame:
        chunk = self.max_payload - frames.BLOB_CHUNK.size
        reply = None
        for off in range(0, max(len(data), 1), chunk):
            reply = self.request(Kind.PUT, frames.put_payload(blob, off, len(data), data[off:off + chunk]))
            if reply.kind != Kind.ACK:
                return reply
        assert reply is not None
        return reply

    def load_model(self) -> None:
        for blob, data in self.model_blobs:
            reply = self.put(blob, data)
            assert reply.kind == Kind.ACK, (self.name, reply)


def error_code(frame: Frame) -> ErrorCode | str:
    if frame.kind != Kind.ERROR:
        return frame.kind.name
    return ErrorCode(frame.payload[0])


# ---- the two sides -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def artifacts(example_models):
    from harness.compile.model import compile_model

    onnx = example_models[MODEL]
    return onnx, compile_model(onnx, "x86_64"), compile_model(onnx, "cortex-m4-qemu")


@pytest.fixture(scope="module")
def inputs(artifacts) -> dict[str, np.ndarray]:
    from harness.run import random_inputs

    a = artifacts[1]
    assert len(a.inputs) >= 2, "the duplicate-name cases need two inputs"
    return random_inputs(a.inputs, 3)


@pytest.fixture(params=["runner", "firmware"])
def side(request, artifacts, tmp_path_factory):
    if request.param == "runner":
        import serial
        from test_serial import Relay, start_device

        from harness.build.runner import build_runner
        from harness.build.toolchain import HostToolchain
        from harness.config.targets import load_target

        art = artifacts[1]
        runner = build_runner(load_target("x86_64"), art, HostToolchain(),
                              out_dir=tmp_path_factory.mktemp("conformance-runner"))
        relay = Relay()
        device = start_device(runner, relay.device_path)
        port = serial.serial_for_url(relay.host_path, timeout=0.05)

        def read(wait: float) -> bytes:
            port.timeout = wait
            return port.read(4096)

        yield Side("runner", port.write, read, [(Blob.GRAPH, art.graph_json.read_bytes()),
                                                  (Blob.PARAMS, art.params_bin.read_bytes())])
        port.close()
        device.kill()
        device.wait()
        relay.close()
    else:
        from harness.build.firmware import FirmwareModel, build_firmware
        from harness.build.toolchain import get_toolchain
        from harness.config.targets import load_target
        from harness.transport.firmware import QemuFirmware

        target = load_target("cortex-m4-qemu")
        art = artifacts[2]
        fw = build_firmware(target, [FirmwareModel(MODEL, art)], get_toolchain("docker", target))
        board = QemuFirmware(target.transport.options["machine"])
        board.put(fw.elf)  # a fresh boot per test: every case starts from the same state
        line = board.line()
        digest = hashlib.sha256(art.graph_json.read_bytes()).digest()
        yield Side("firmware", lambda b: line._write(b, "conformance"), line._read, [(Blob.GRAPH, digest)])
        board.close()


def ready(side: Side) -> Side:
    side.wait_hello_announcement()
    side.hello()
    return side


# ---- inputs blobs: names, duplicates, counts, shapes ---------------------------------------

def blob_cases(inputs: dict[str, np.ndarray], side: str) -> list[tuple[str, bytes, ErrorCode | str]]:
    """Wrong inputs blobs no larger than the right one (the firmware's buffer holds exactly
    its model's inputs blob: anything longer is refused at PUT, PUT_SIZE)."""
    (a, xa), (b, xb) = list(inputs.items())[:2]
    rest = dict(list(inputs.items())[2:])
    good = tensorfile.dumps(inputs)

    def renamed(old: str, new: str) -> bytes:  # dumps takes a mapping: names changed by hand
        return good.replace(struct.pack("<Q", len(old.encode())) + old.encode(),
                            struct.pack("<Q", len(new.encode())) + new.encode(), 1)

    short, long = sorted((a, b), key=len)
    same_size = {np.dtype("float32"): np.int32, np.dtype("int32"): np.float32}[xa.dtype]
    assert xa.shape[-1] > 1, "the shape case cuts the last dimension"
    return [
        ("good", good, "ACK"),
        ("an input named twice", renamed(long, short), ErrorCode.INPUTS_TWICE),
        ("an unknown name", renamed(a, "?" * len(a)), ErrorCode.INPUTS_UNKNOWN),
        ("one tensor short", tensorfile.dumps({a: xa}), ErrorCode.INPUTS_COUNT),
        ("not an NDArray-list", b"\x00" * 64, ErrorCode.INPUTS_LIST),
        ("truncated data", good[:-3], ErrorCode.INPUTS_DATA),
        ("another dtype", tensorfile.dumps({a: xa.view(same_size), b: xb, **rest}), ErrorCode.INPUTS_DTYPE),
        ("another shape", tensorfile.dumps({a: np.ascontiguousarray(xa[..., :-1]), b: xb, **rest}),
         ErrorCode.INPUTS_SHAPE),
        ("truncated name table", good[:30], ErrorCode.INPUTS_NAME),
        # a whole list is exactly the right size: bytes after it fit only the runner's buffer
        ("bytes after the last tensor", good + b"\x00",
         ErrorCode.INPUTS_TRAILING if side == "runner" else ErrorCode.PUT_SIZE),
    ]


def test_inputs_blobs_get_the_same_answer(side: Side, inputs) -> None:
    """Names, duplicates, counts, dtypes, shapes, truncation: RUN's answer, case by case."""
    ready(side).load_model()
    got = {}
    for name, blob, want in blob_cases(inputs, side.name):
        put = side.put(Blob.INPUTS, blob)
        if put.kind != Kind.ACK:
            got[name] = error_code(put)
            continue
        got[name] = error_code(side.request(Kind.RUN, frames.run_payload(1, 0)))
    want = {name: expected for name, _, expected in blob_cases(inputs, side.name)}
    assert got == want, side.name


def test_requests_get_the_same_answer(side: Side, inputs) -> None:
    """Iterations, payload sizes, blob ids, order, kinds: the same ErrorCode on both devices."""
    ready(side)
    blob = tensorfile.dumps(inputs)
    # before any RUN
    assert error_code(side.request(Kind.GET, frames.get_payload(Blob.OUTPUTS, 0, 64))) == ErrorCode.NO_OUTPUTS
    assert error_code(side.request(Kind.RUN, frames.run_payload(1, 0))) == ErrorCode.INCOMPLETE
    side.load_model()
    assert error_code(side.put(Blob.INPUTS, blob)) == "ACK"
    table = [
        (Kind.RUN, frames.run_payload(0, 0), ErrorCode.ITERS),
        (Kind.RUN, frames.run_payload(frames.MAX_ITERS + 1, 0), ErrorCode.ITERS),
        (Kind.RUN, frames.run_payload(0xFFFFFFFF, 0), ErrorCode.ITERS),
        (Kind.RUN, b"\x01\x00\x00", ErrorCode.RUN),
        (Kind.PUT, b"\x02\x00", ErrorCode.PUT),
        (Kind.PUT, frames.put_payload(Blob.OUTPUTS, 0, 4, b"abcd"), ErrorCode.PUT),
        (Kind.PUT, frames.put_payload(Blob.INPUTS, 5, len(blob), b"x"), ErrorCode.PUT_ORDER),
        (Kind.PUT, frames.put_payload(Blob.INPUTS, 0, 4, b"abcdefgh"), ErrorCode.PUT_ORDER),
        (Kind.GET, bytes([9]) + bytes(6), ErrorCode.GET),
        (Kind.GET, frames.get_payload(Blob.OUTPUTS, 0, 64)[:-1], ErrorCode.GET),
        (Kind.ACK, b"", ErrorCode.KIND),
        (Kind.BUSY, b"", ErrorCode.KIND),
    ]
    got = [error_code(side.request(kind, payload)) for kind, payload, _ in table]
    assert got == [want for _, _, want in table], side.name
    # a good run after all that; then GET past the end
    assert error_code(side.put(Blob.INPUTS, blob)) == "ACK"
    assert side.request(Kind.RUN, frames.run_payload(2, 0)).kind == Kind.ACK
    total, _ = frames.parse_get(side.request(Kind.GET, frames.get_payload(Blob.OUTPUTS, 0, 16)).payload)
    assert error_code(side.request(Kind.GET, frames.get_payload(Blob.OUTPUTS, total + 1, 16))) == ErrorCode.GET_OFFSET
    assert side.request(Kind.BYE).kind == Kind.ACK


def outputs_blob(side: Side) -> bytes:
    """The whole outputs blob, GET by GET."""
    got, total = b"", None
    while total is None or len(got) < total:
        reply = side.request(Kind.GET, frames.get_payload(Blob.OUTPUTS, len(got), side.max_payload - 4))
        assert reply.kind == Kind.ACK, (side.name, error_code(reply))
        total, data = frames.parse_get(reply.payload)
        got += data
    return got


def test_a_run_without_new_inputs_runs_on_the_same_inputs(side: Side, inputs) -> None:
    """One inputs blob, then RUN, RUN: the same outputs (the firmware copies the blob into the
    model's inputs at the first RUN, and its arena tail then holds the outputs, not the blob)."""
    ready(side).load_model()
    assert error_code(side.put(Blob.INPUTS, tensorfile.dumps(inputs))) == "ACK"
    assert side.request(Kind.RUN, frames.run_payload(2, 0)).kind == Kind.ACK
    first = outputs_blob(side)
    assert side.request(Kind.RUN, frames.run_payload(1, 0)).kind == Kind.ACK
    assert outputs_blob(side) == first, side.name
    other = {k: (v + 1).astype(v.dtype) for k, v in inputs.items()}
    assert error_code(side.put(Blob.INPUTS, tensorfile.dumps(other))) == "ACK"
    assert side.request(Kind.RUN, frames.run_payload(1, 0)).kind == Kind.ACK
    assert outputs_blob(side) != first, side.name


def test_repeats_are_answered_from_the_held_response(side: Side, inputs) -> None:
    """The repeated-request rule of frames.py: the same kind, seq, length and CRC get the held
    response, never a second execution; the same seq with other content is executed."""
    ready(side).load_model()
    blob = tensorfile.dumps(inputs)
    first = Frame(Kind.PUT, 11, frames.put_payload(Blob.INPUTS, 0, len(blob), blob[:40]))
    second = Frame(Kind.PUT, 12, frames.put_payload(Blob.INPUTS, 40, len(blob), blob[40:80]))
    for frame in (first, second):
        side.send(frame)
        assert side.answer(frame.seq).kind == Kind.ACK
    side.send(second)  # executed again it would be out of order: an ERROR
    again = side.answer(12)
    assert again.kind == Kind.ACK, (side.name, again)
    # seq 12 again with other content: a new request, executed (here: out of order)
    side.send(Frame(Kind.PUT, 12, frames.put_payload(Blob.INPUTS, 0, len(blob), blob[:39])))
    assert error_code(side.answer(12)) == "ACK"  # offset 0 starts the blob over: accepted
    side.send(Frame(Kind.PUT, 12, frames.put_payload(Blob.INPUTS, 500, len(blob), b"z")))
    assert error_code(side.answer(12)) == ErrorCode.PUT_ORDER
    # HELLO is never a repeat: the same HELLO frame twice is answered twice, as HELLO
    hello = Frame(Kind.HELLO, 13, bytes([frames.VERSION]))
    for _ in range(2):
        side.send(hello)
        assert side.answer(13).kind == Kind.HELLO


def test_corruption_and_limits(side: Side) -> None:
    """A damaged payload is NAKed with its seq; a damaged header and a frame longer than the
    device's max payload are never answered; the next request is."""
    ready(side)
    good = frames.encode(Frame(Kind.GET, 21, frames.get_payload(Blob.OUTPUTS, 0, 8)))
    damaged = bytearray(good)
    damaged[-6] ^= 0x10
    side.write(bytes(damaged))
    nak = side.answer(21)
    assert nak is not None and nak.kind == Kind.NAK, (side.name, nak)
    header = bytearray(frames.encode(Frame(Kind.GET, 22, frames.get_payload(Blob.OUTPUTS, 0, 8))))
    header[4] ^= 0x01
    side.write(bytes(header))
    assert side.answer(22, timeout=1.5) is None
    # one byte over the device's max payload, framed by hand (the encoder refuses the runner's)
    head = struct.pack("<BBH", int(Kind.PUT), 23, side.max_payload + 1)
    body = head + struct.pack("<H", zlib.crc32(head) & 0xFFFF) + bytes(side.max_payload + 1)
    side.write(frames.MAGIC + body + struct.pack("<I", zlib.crc32(body)))
    assert side.answer(23, timeout=1.5) is None
    assert side.request(Kind.HELLO, bytes([frames.VERSION])).kind == Kind.HELLO


def test_a_truncated_frame_does_not_leave_the_device_stuck(side: Side) -> None:
    """Issue 22 item 3: a host that stops mid-frame (its header valid, the payload cut) and a
    new host session: after a quiet gap the device drops the partial frame, announces HELLO,
    and answers the new session's HELLO at once."""
    ready(side)
    wire = frames.encode(Frame(Kind.PUT, 31, frames.put_payload(Blob.INPUTS, 0, 100, bytes(100))))
    side.write(wire[:20])  # header and a little payload: the rest never comes
    time.sleep(frames.QUIET_MS / 1000 * 2)
    side.wait_hello_announcement()
    reply = side.request(Kind.HELLO, bytes([frames.VERSION]))
    assert reply.kind == Kind.HELLO, (side.name, reply)


def test_outputs_are_named_the_same_way_for_any_count(tmp_path: Path) -> None:
    """tensors_output_name (C, minrt-run's outputs) and tensorfile.output_name (the host's, for
    the firmware's raw outputs) agree, past 10 and 100 (the firmware once named its 100th
    output "output00")."""
    src = REPO_ROOT / "runtime_c" / "proto" / "tensors.c"
    exe = tmp_path / "names"
    prog = exe.with_suffix(".c")
    prog.write_text('#include <stdio.h>\n#include "tensors.h"\nint main(void) { char b[16]; unsigned i;\n'
                    '  for (i = 0; i < 1005; i++) { tensors_output_name(b, i); puts(b); }\n'
                    '  tensors_output_name(b, 4294967295u); puts(b); return 0; }\n')
    import subprocess

    core = sorted(str(p) for p in (REPO_ROOT / "runtime_c" / "src").glob("*.c"))  # tensors.c calls minrt
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", f"-I{REPO_ROOT / 'runtime_c' / 'include'}",
                    f"-I{src.parent}", str(prog), str(src), *core, "-o", str(exe), "-lm"], check=True)
    names = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert names == [tensorfile.output_name(i) for i in [*range(1005), 4294967295]]


def test_error_codes_are_one_table() -> None:
    """frames.ErrorCode holds the C enums of frame.h (FRAME_E_*) and tensors.h (TENSORS_E_*,
    offset by FRAME_E_INPUTS), name for name and value for value."""
    proto = REPO_ROOT / "runtime_c" / "proto"
    c_frame = {m[0]: int(m[1]) for m in re.findall(r"FRAME_E_(\w+) = (\d+)", (proto / "frame.h").read_text())}
    c_tensors = {m[0]: int(m[1]) for m in re.findall(r"TENSORS_E_(\w+) = (\d+)", (proto / "tensors.h").read_text())}
    base = c_frame.pop("INPUTS")
    names = {"KIND": "KIND", "PUT": "PUT", "PUT_ORDER": "PUT_ORDER", "PUT_SIZE": "PUT_SIZE", "MEMORY": "MEMORY",
             "RUN": "RUN", "ITERS": "ITERS", "INCOMPLETE": "INCOMPLETE", "GET": "GET", "NO_OUTPUTS": "NO_OUTPUTS",
             "GET_OFFSET": "GET_OFFSET", "LOAD": "LOAD", "EXEC": "EXEC", "OUTPUTS": "OUTPUTS", "MODEL": "MODEL"}
    want = {names[k]: v for k, v in c_frame.items()}
    want.update({f"INPUTS_{k}": base + v for k, v in c_tensors.items()})
    assert {c.name: c.value for c in ErrorCode} == want
    assert all(c.text for c in ErrorCode)
    header = (proto / "frame.h").read_text()
    assert f"FRAME_VERSION = {frames.VERSION}" in header and f"FRAME_QUIET_MS {frames.QUIET_MS}" in header
    assert f"FRAME_MAX_ITERS {frames.MAX_ITERS:#x}u" in header


SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]

FRAME_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "frame.h"
/* every frame sealed here is found again, alone or after noise; damaged, truncated and
 * random buffers never make frame_scan read past its length (ASan watches) */
static uint32_t rng = 12345;
static uint8_t next(void) { rng = rng * 1103515245u + 12345u; return (uint8_t)(rng >> 16); }
int main(void) {
  static uint8_t f[FRAME_OVERHEAD + 300];
  uint8_t *buf;
  struct frame_view v;
  size_t n, len, used, cut, found = 0, damaged = 0;
  int iter, r;
  for (iter = 0; iter < 20000; iter++) {
    n = next() % 200;
    for (cut = 0; cut < n; cut++) f[FRAME_HDR + cut] = next();
    len = frame_seal(f, 1 + next() % 9, next(), n);
    f[2] &= 0x7F;                                  /* a host's frame: checks again */
    frame_put16(f + 6, frame_crc32(f + 2, 4) & 0xFFFF);
    frame_put32(f + FRAME_HDR + n, frame_crc32(f + 2, FRAME_HDR - 2 + n));
    buf = (uint8_t *)malloc(len);                  /* exact size: ASan sees any overread */
    memcpy(buf, f, len);
    r = frame_scan(buf, len, 256, &v, &used);
    if (r != FRAME_OK || used != len || v.len != n) { printf("sealed frame not found\n"); return 1; }
    found++;
    for (cut = 0; cut < len; cut++) {              /* every truncation: never a frame */
      r = frame_scan(buf, cut, 256, &v, &used);
      if (r != FRAME_NEED || used > cut) { printf("truncated frame accepted\n"); return 1; }
    }
    buf[next() % len] ^= (uint8_t)(1u << (next() % 8));   /* one bit flipped: never OK */
    r = frame_scan(buf, len, 256, &v, &used);
    if (r == FRAME_OK && used == len) { printf("damaged frame accepted\n"); return 1; }
    damaged += r == FRAME_DAMAGED;
    for (cut = 0; cut < len; cut++) buf[cut] = next();   /* noise */
    r = frame_scan(buf, len, 256, &v, &used);
    if (used > len) return 1;
    free(buf);
  }
  printf("%zu %zu\n", found, damaged);
  return 0;
}
"""


def test_frame_scanner_under_sanitizers(tmp_path: Path) -> None:
    """frame.c under ASan and UBSan: 20,000 sealed frames found, every truncation waited for,
    every single bit flip refused, random buffers skipped, nothing read past a buffer."""
    import subprocess

    proto = REPO_ROOT / "runtime_c" / "proto"
    src = tmp_path / "frame_driver.c"
    src.write_text(FRAME_DRIVER)
    exe = tmp_path / "frame_driver"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", *SAN, f"-I{proto}", str(src), str(proto / "frame.c"),
                    "-o", str(exe)], check=True)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    found, damaged = (int(x) for x in done.stdout.split())
    assert found == 20000 and damaged > 10000, done.stdout


def test_inputs_reader_under_sanitizers(artifacts, inputs, tmp_path: Path) -> None:
    """tensors.c through minrt-run built with ASan and UBSan (and minrt's guard zones): every
    prefix of a right inputs blob and 300 random bit flips of it give exit 0 or one line
    `minrt-run: inputs: ...` with exit 1, never a sanitizer report."""
    import random
    import subprocess

    from test_runtime_c import build_checking_runner

    art = artifacts[1]
    exe = build_checking_runner(art, tmp_path / "minrt-run-san")
    good = tensorfile.dumps(inputs)
    rng = random.Random(7)
    flips = []
    for _ in range(300):
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        flips.append(bytes(b))
    outcomes: dict[str, int] = {}
    for i, blob in enumerate([good[:k] for k in range(len(good))] + flips):
        path = tmp_path / "in.bin"
        path.write_bytes(blob)
        done = subprocess.run([str(exe), str(art.graph_json), str(art.params_bin), str(path),
                               str(tmp_path / "out.bin")], capture_output=True, text=True, errors="replace", timeout=60,
                              env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})  # exits on error unfreed
        assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr, (i, done.stderr[-2000:])
        assert done.returncode in (0, 1), (i, done.returncode, done.stderr)
        if done.returncode == 1:
            assert done.stderr.startswith("minrt-run: inputs: ") and done.stderr.count("\n") == 1, done.stderr
        key = done.stderr.split(":")[-1].strip() if done.returncode else "ok"
        outcomes[key] = outcomes.get(key, 0) + 1
    print(outcomes)
    assert outcomes.get("ok", 0) < 301 and len(outcomes) >= 4, outcomes

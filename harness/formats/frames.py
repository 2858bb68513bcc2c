"""The framed binary protocol `minrt-run --serial` and the firmware speak over a console line
or UART. This text is the specification; one C implementation of the codec (runtime_c/proto:
frame.c, tensors.c) serves both devices, and tests/test_proto_conformance.py runs the same cases
against both.

The host is the master: it sends one request frame and waits for one response frame
(stop-and-wait), so every recovery is the host retransmitting the same request. The device
sends only two things unasked: a HELLO announcement (seq 0) whenever the line has been quiet
(no byte) for QUIET_MS, and BUSY while a RUN executes. The host waits for an announcement
before its first byte (the terminal is raw by then). After the same quiet period the device
drops any partial frame it holds: a sender that stopped mid-frame is gone, and the next
session's HELLO is always heard and answered.

Frame (all integers little-endian):

    offset  size  field
    0       2     magic A5 5A
    2       1     type: low 7 bits the kind (below), bit 7 set when the device sent it
    3       1     seq: the host numbers its requests; a response carries its request's seq
    4       2     payload length, at most the device's max payload (HELLO tells it)
    6       2     header check: low 16 bits of CRC-32 of bytes 2..5
    8       n     payload
    8+n     4     CRC-32 (zlib polynomial) of bytes 2..8+n-1

The header check lets a receiver reject a corrupted length at once instead of waiting for
bytes that never come. A receiver skips anything that is not a valid frame (console echo,
kernel messages, prompt escapes, line noise) byte by byte until the next valid frame.

Kinds and payloads (H = host request, D = device response):

    HELLO  H: u8 version             D: u8 version, u16 max payload, ASCII identification
    PUT    H: u8 blob, u32 offset, u32 total, data      D: ACK (empty)
    RUN    H: u32 iters, u32 workspace bytes            D: ACK with the timing (below)
    GET    H: u8 blob, u32 offset, u16 max              D: ACK with u32 total + data
    BYE    H: empty (minrt-run answers ACK, answers repeats for 1 s, restores its tty
           and exits 0; one that hears no valid request for 15 s exits 1 the same way;
           the firmware answers ACK and keeps serving; a BYE sent while minrt-run
           executes a RUN stops it within a second, unanswered, tty restored, exit 130:
           the host gave up on the run)
    ACK    D: the request's result (see above)
    NAK    D: a frame arrived damaged; the host resends its request at once
    ERROR  D: u8 code (ErrorCode), then UTF-8 detail (may be empty); the request failed and
           the session stays usable. The same fault gets the same code from both devices.
    BUSY   D: empty, when a RUN starts and every second until it ends: slow, not dead

Blob ids: 0 graph.json, 1 params.bin, 2 inputs (NDArray-list), 3 outputs (NDArray-list,
tensors named output0, output1, ...). Chunks of a blob arrive in order; offset 0 starts it over.
RUN's iters is 1..MAX_ITERS on every device, checked before anything else is.

The firmware holds its models in flash: its graph blob is the graph.json's sha256 (32 bytes),
which selects the model, and no params are sent (the host checks params.bin's sha256 against
the image's manifest). Its RUN answer is TIMING_RECORD (binary); minrt-run's is a JSON line.

A repeated request is one whose kind, seq, length and CRC are those of the last request
served (its response was lost): it gets the held response again, never a second execution.
The same seq with other content is a new request (a host that restarted without HELLO must
not get a stale answer); HELLO is never a repeat (it starts a session).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

MAGIC = b"\xa5\x5a"
VERSION = 2
MAX_PAYLOAD = 4096  # minrt-run's; the firmware's is smaller (HELLO says)
#: The one limit on inferences per request, for every device, transport and command (the CLI's
#: --iters, run_on_target and the pytest plugin, minrt-run -n, RUN frames): what the devices'
#: 32-bit signed count holds. runtime_c/proto/frame.h's FRAME_MAX_ITERS mirrors it (a test checks).
MAX_ITERS = 0x7FFFFFFF
QUIET_MS = 500
FROM_DEVICE = 0x80
HEADER = struct.Struct("<2sBBHH")
TRAILER = struct.Struct("<I")
OVERHEAD = HEADER.size + TRAILER.size


class Kind(IntEnum):
    HELLO = 1
    PUT = 2
    RUN = 3
    GET = 4
    BYE = 5
    ACK = 6
    NAK = 7
    ERROR = 8
    BUSY = 9


class Blob(IntEnum):
    GRAPH = 0
    PARAMS = 1
    INPUTS = 2
    OUTPUTS = 3


class ErrorCode(IntEnum):
    """ERROR codes (runtime_c/proto/frame.h FRAME_E_*, tensors.h TENSORS_E_* from INPUTS_LIST)."""

    KIND = 1
    PUT = 2
    PUT_ORDER = 3
    PUT_SIZE = 4
    MEMORY = 5
    RUN = 6
    ITERS = 7
    INCOMPLETE = 8
    GET = 9
    NO_OUTPUTS = 10
    GET_OFFSET = 11
    LOAD = 12
    EXEC = 13
    OUTPUTS = 14
    MODEL = 15
    INPUTS_LIST = 33
    INPUTS_COUNT = 34
    INPUTS_NAME = 35
    INPUTS_UNKNOWN = 36
    INPUTS_TWICE = 37
    INPUTS_HEADER = 38
    INPUTS_DTYPE = 39
    INPUTS_SHAPE = 40
    INPUTS_DATA = 41
    INPUTS_TRAILING = 42
    INPUTS_SET = 43

    @property
    def text(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT = {
    ErrorCode.KIND: "not a request kind",
    ErrorCode.PUT: "PUT: bad blob id or short payload",
    ErrorCode.PUT_ORDER: "PUT: chunk out of order or past the blob's end",
    ErrorCode.PUT_SIZE: "PUT: blob larger than the device can hold",
    ErrorCode.MEMORY: "out of memory",
    ErrorCode.RUN: "RUN: payload must be 8 bytes",
    ErrorCode.ITERS: f"RUN: iters must be at least 1 and at most {MAX_ITERS}",
    ErrorCode.INCOMPLETE: "RUN: a blob was not sent completely",
    ErrorCode.GET: "GET: bad blob id or payload size",
    ErrorCode.NO_OUTPUTS: "GET: no outputs (RUN first)",
    ErrorCode.GET_OFFSET: "GET: offset past the blob's end",
    ErrorCode.LOAD: "load: minrt refused the model",
    ErrorCode.EXEC: "run: a kernel failed",
    ErrorCode.OUTPUTS: "outputs larger than the device can hold",
    ErrorCode.MODEL: "graph.json is none of this image's models",
    ErrorCode.INPUTS_LIST: "inputs: not an NDArray-list",
    ErrorCode.INPUTS_COUNT: "inputs: not one tensor per graph input",
    ErrorCode.INPUTS_NAME: "inputs: truncated name",
    ErrorCode.INPUTS_UNKNOWN: "inputs: a name that is no graph input",
    ErrorCode.INPUTS_TWICE: "inputs: an input given twice",
    ErrorCode.INPUTS_HEADER: "inputs: bad tensor header",
    ErrorCode.INPUTS_DTYPE: "inputs: dtype/ndim differ from the graph input",
    ErrorCode.INPUTS_SHAPE: "inputs: shape differs from the graph input or is truncated",
    ErrorCode.INPUTS_DATA: "inputs: bad nbytes or truncated data",
    ErrorCode.INPUTS_TRAILING: "inputs: bytes after the last tensor",
    ErrorCode.INPUTS_SET: "inputs: minrt refused the data",
}


class FrameError(ValueError):
    """A frame could not be encoded (payload too large, bad kind or seq)."""


@dataclass(frozen=True)
class Frame:
    kind: Kind
    seq: int
    payload: bytes = b""
    from_device: bool = False


def _header_check(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFF


def encode(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    if not 0 <= frame.seq <= 0xFF:
        raise FrameError(f"seq {frame.seq} is not a byte")
    type_byte = int(frame.kind) | (FROM_DEVICE if frame.from_device else 0)
    head = struct.pack("<BBH", type_byte, frame.seq, len(frame.payload))
    body = head + struct.pack("<H", _header_check(head)) + frame.payload
    return MAGIC + body + TRAILER.pack(zlib.crc32(body))


@dataclass
class DecoderStats:
    frames: int = 0
    skipped_bytes: int = 0  # bytes that were not part of any valid frame
    bad_header: int = 0  # header check failed, or unknown kind, or length too large
    bad_crc: int = 0  # header fine, payload CRC wrong


@dataclass
class Decoder:
    """Incremental frame parser: feed() any bytes, get back the valid frames found so far.

    `damaged` counts frames whose header was valid but whose CRC failed since the last call
    to take_damaged(): the receiver's cue to ask for a retransmission at once.
    """

    buf: bytearray = field(default_factory=bytearray)
    stats: DecoderStats = field(default_factory=DecoderStats)
    damaged: int = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames: list[Frame] = []
        while True:
            start = self.buf.find(MAGIC)
            if start < 0:
                # keep a trailing A5: it may be the first half of the next magic
                keep = 1 if self.buf.endswith(MAGIC[:1]) else 0
                self.stats.skipped_bytes += len(self.buf) - keep
                del self.buf[: len(self.buf) - keep]
                return frames
            if start:
                self.stats.skipped_bytes += start
                del self.buf[:start]
            if len(self.buf) < HEADER.size:
                return frames
            _, type_byte, seq, length, check = HEADER.unpack_from(self.buf)
            kind_value = type_byte & ~FROM_DEVICE
            if (
                _header_check(bytes(self.buf[2:6])) != check
                or length > MAX_PAYLOAD
                or kind_value not in Kind._value2member_map_
            ):
                self.stats.bad_header += 1
                self._skip_one()
                continue
            end = HEADER.size + length + TRAILER.size
            if len(self.buf) < end:
                return frames
            body = bytes(self.buf[2 : HEADER.size + length])
            (crc,) = TRAILER.unpack_from(self.buf, HEADER.size + length)
            if zlib.crc32(body) != crc:
                self.stats.bad_crc += 1
                self.damaged += 1
                self._skip_one()
                continue
            frames.append(
                Frame(Kind(kind_value), seq, body[6:], from_device=bool(type_byte & FROM_DEVICE))
            )
            self.stats.frames += 1
            del self.buf[:end]

    def take_damaged(self) -> int:
        n, self.damaged = self.damaged, 0
        return n

    def _skip_one(self) -> None:
        self.stats.skipped_bytes += 1
        del self.buf[:1]


# Payload helpers: one function per payload layout, used by both the transport and the tests.
BLOB_CHUNK = struct.Struct("<BII")  # PUT: blob, offset, total
GET_REQ = struct.Struct("<BIH")  # GET: blob, offset, max
RUN_REQ = struct.Struct("<II")  # RUN: iters, workspace
HELLO_RESP = struct.Struct("<BH")  # version, max payload
#: The firmware's RUN answer: iters, tick_hz, arena bytes, peak stack bytes (since boot),
#: then min, sum and max ticks of one run.
TIMING_RECORD = struct.Struct("<IIIIQQQ")


def put_payload(blob: Blob, offset: int, total: int, data: bytes) -> bytes:
    return BLOB_CHUNK.pack(int(blob), offset, total) + data


def get_payload(blob: Blob, offset: int, max_len: int) -> bytes:
    return GET_REQ.pack(int(blob), offset, max_len)


def run_payload(iters: int, workspace: int) -> bytes:
    return RUN_REQ.pack(iters, workspace)


def parse_hello(payload: bytes) -> tuple[int, int, str]:
    if len(payload) < HELLO_RESP.size:
        raise FrameError(f"HELLO response of {len(payload)} bytes is too short")
    version, max_payload = HELLO_RESP.unpack_from(payload)
    return version, max_payload, payload[HELLO_RESP.size :].decode("utf-8", "replace")


def parse_get(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 4:
        raise FrameError(f"GET response of {len(payload)} bytes is too short")
    (total,) = struct.unpack_from("<I", payload)
    return total, payload[4:]


def parse_error(payload: bytes) -> tuple[ErrorCode | int, str]:
    """An ERROR payload: its code (an ErrorCode when known) and the text to show. minrt-run
    sends its whole message as the detail; the firmware sends none (the code's text is shown)
    but minrt's own message for a load or run failure (shown after the code's text)."""
    if not payload:
        return 0, "an ERROR without a code"
    detail = payload[1:].decode("utf-8", "replace")
    try:
        code = ErrorCode(payload[0])
    except ValueError:
        return payload[0], f"error code {payload[0]}" + (f": {detail}" if detail else "")
    if not detail:
        return code, code.text
    if code in (ErrorCode.LOAD, ErrorCode.EXEC) and not detail.startswith(("load:", "run:")):
        return code, f"{code.text}: {detail}"
    return code, detail


def parse_timing_record(payload: bytes) -> dict[str, int]:
    """The firmware's RUN answer as the timing dict the harness records (ticks, not time)."""
    if len(payload) != TIMING_RECORD.size:
        raise FrameError(f"timing record of {len(payload)} bytes (expected {TIMING_RECORD.size})")
    iters, hz, arena, stack, lo, total, hi = TIMING_RECORD.unpack(payload)
    if not 1 <= iters <= MAX_ITERS:
        raise FrameError(f"timing record for {iters} iterations")
    return {"iters": iters, "tick_hz": hz, "arena_bytes": arena, "stack_peak_bytes": stack,
            "min_ticks": lo, "mean_ticks": total // iters, "max_ticks": hi}

"""The framed binary protocol `minrt-run --serial` speaks over a console line.

The host is the master: it sends one request frame and waits for one response frame
(stop-and-wait), so every recovery is the host retransmitting the same request. The device
sends only two things unasked: a HELLO announcement (seq 0) whenever the line has been quiet
for 500 ms (the host waits for one before its first byte: the terminal is raw by then), and
BUSY while a RUN executes.

Frame (all integers little-endian):

    offset  size  field
    0       2     magic A5 5A
    2       1     type: low 7 bits the kind (below), bit 7 set when the device sent it
    3       1     seq: the host numbers its requests; a response carries its request's seq
    4       2     payload length, at most MAX_PAYLOAD
    6       2     header check: low 16 bits of CRC-32 of bytes 2..5
    8       n     payload
    8+n     4     CRC-32 (zlib polynomial) of bytes 2..8+n-1

The header check lets a receiver reject a corrupted length at once instead of waiting for
bytes that never come. A receiver skips anything that is not a valid frame (console echo,
kernel messages, prompt escapes, line noise) byte by byte until the next valid frame.

Kinds and payloads (H = host request, D = device response):

    HELLO  H: u8 version             D: u8 version, u16 max payload, ASCII identification
    PUT    H: u8 blob, u32 offset, u32 total, data      D: ACK (empty)
    RUN    H: u32 iters, u32 workspace bytes            D: ACK with the timing JSON line
    GET    H: u8 blob, u32 offset, u16 max              D: ACK with u32 total + data
    BYE    H: empty (the device answers ACK, answers repeats for 1 s, restores its tty
           and exits 0; one that hears no valid request for 15 s exits 1 the same way)
    ACK    D: the request's result (see above)
    NAK    D: a frame arrived damaged; the host resends its request at once
    ERROR  D: UTF-8 message; the request failed (the session stays usable)
    BUSY   D: empty, when a RUN starts and every second until it ends: slow, not dead

Blob ids: 0 graph.json, 1 params.bin, 2 inputs (NDArray-list), 3 outputs (NDArray-list).
A repeated request (same seq as the last one served) gets the cached response again, so a
lost response costs one retransmission and never a second execution.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

MAGIC = b"\xa5\x5a"
VERSION = 1
MAX_PAYLOAD = 4096
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

"""A minimal, strict decoder for the protobuf wire format (what payload.py needs, nothing more).

Lives here: walking the top-level fields of one encoded message, varint decoding, and typed
accessors that check a field's wire type. There is no schema: callers pick the field numbers they
know and skip the rest, as a protobuf parser does with unknown fields.

Strict where protobuf is lenient only for things no real encoder produces: groups (wire types 3
and 4), varints longer than 10 bytes or above 2**64 - 1, field number 0, and lengths that run past
the end of the buffer all raise WireFormatError. The decoder never copies length-delimited data:
it hands out memoryview slices of the input.

Imports nothing of Nebula: callers turn WireFormatError into their own error type with context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
SGROUP: Final = 3
EGROUP: Final = 4
I32: Final = 5

WIRE_TYPE_NAMES: Final[dict[int, str]] = {
    VARINT: "varint",
    I64: "64-bit",
    LEN: "length-delimited",
    SGROUP: "start-group",
    EGROUP: "end-group",
    I32: "32-bit",
}

_MAX_VARINT_BYTES: Final = 10
_MAX_UINT64: Final = (1 << 64) - 1
_MAX_FIELD_NUMBER: Final = (1 << 29) - 1


class WireFormatError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


@dataclass(frozen=True, slots=True)
class Field:
    """One decoded field: its number, wire type, and either an integer or a slice of the input.

    `offset` is where the field's tag starts inside the message, for error messages.
    """

    number: int
    wire_type: int
    offset: int
    number_value: int
    data: memoryview

    def _expect(self, wire_type: int, name: str) -> None:
        if self.wire_type != wire_type:
            raise WireFormatError(
                f"field {self.number} ({name}) has wire type {self.wire_type} "
                f"({WIRE_TYPE_NAMES.get(self.wire_type, '?')}), "
                f"expected {WIRE_TYPE_NAMES[wire_type]}"
            )

    def as_uint64(self, name: str) -> int:
        """The value of a `uint64` field (wire type varint)."""
        self._expect(VARINT, name)
        return self.number_value

    def as_uint32(self, name: str) -> int:
        """The value of a `uint32` field: like protobuf, keep the low 32 bits of the varint."""
        self._expect(VARINT, name)
        return self.number_value & 0xFFFFFFFF

    def as_bytes(self, name: str) -> memoryview:
        """The payload of a `bytes`, `string` or embedded-message field (wire type LEN)."""
        self._expect(LEN, name)
        return self.data


_EMPTY: Final = memoryview(b"")


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at `buf[pos:]`; return (value, position after it)."""
    value = 0
    shift = 0
    end = len(buf)
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise WireFormatError(f"varint at offset {pos} runs past the end ({end} bytes)")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > _MAX_UINT64:
                raise WireFormatError(f"varint at offset {pos} exceeds 64 bits")
            return value, pos + i + 1
        shift += 7
    raise WireFormatError(f"varint at offset {pos} is longer than {_MAX_VARINT_BYTES} bytes")


def iter_fields(message: bytes | bytearray | memoryview) -> Iterator[Field]:
    """Yield the top-level fields of one encoded message, in order (repeats included)."""
    buf = message if isinstance(message, memoryview) else memoryview(message)
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B")
    end = len(buf)
    pos = 0
    while pos < end:
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 0x7
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise WireFormatError(f"invalid field number {number} at offset {start}")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos)
            yield Field(number, wire_type, start, value, _EMPTY)
        elif wire_type in (I64, I32):
            width = 8 if wire_type == I64 else 4
            if pos + width > end:
                raise WireFormatError(
                    f"field {number} at offset {start}: {width}-byte value runs past the end"
                )
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
            yield Field(number, wire_type, start, value, _EMPTY)
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos)
            if length > end - pos:
                raise WireFormatError(
                    f"field {number} at offset {start}: length {length} runs past the end "
                    f"({end - pos} bytes left)"
                )
            yield Field(number, wire_type, start, 0, buf[pos : pos + length])
            pos += length
        elif wire_type in (SGROUP, EGROUP):
            raise WireFormatError(
                f"field {number} at offset {start}: groups (wire type {wire_type}) are not used "
                "in update payloads"
            )
        else:
            raise WireFormatError(
                f"field {number} at offset {start}: invalid wire type {wire_type}"
            )

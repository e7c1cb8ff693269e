"""Read (and extend) SentencePiece `.model` files: the protobuf wire format, so no `protobuf` package is needed.

`read_sp_model` returns the parts of a ModelProto that matter for encoding; `piece_entries` writes extra
`pieces` entries that can be appended to a model's bytes (protobuf appends repeated fields met later).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.errors import UsageError

# sentencepiece_model.proto piece types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2  # TrainerSpec.model_type


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


@dataclass
class SpModel:
    """The parts of a SentencePiece ModelProto that matter for encoding."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, type)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _sp_piece(message: bytes) -> tuple[str, float, int]:
    """One `SentencePiece` message: (piece, score, type); inlined for the common one-byte keys (130k pieces)."""
    piece, score, kind = "", 0.0, NORMAL
    i, end = 0, len(message)
    while i < end:
        key = message[i]
        if key == 0x0A:  # 1: piece (string)
            size, i = _varint(message, i + 1)
            piece, i = message[i : i + size].decode("utf-8"), i + size
        elif key == 0x15:  # 2: score (float)
            score, i = struct.unpack_from("<f", message, i + 1)[0], i + 5
        elif key == 0x18:  # 3: type (enum)
            kind, i = _varint(message, i + 1)
        else:  # unknown field: parse generically
            for number, value in _proto_fields(message):
                if number == 1 and isinstance(value, bytes):
                    piece = value.decode("utf-8")
                elif number == 2 and isinstance(value, bytes):
                    score = struct.unpack("<f", value)[0]
                elif number == 3 and isinstance(value, int):
                    kind = value
            break
    return piece, score, kind


def read_sp_model(path: Path) -> SpModel:
    """Parse a SentencePiece ``.model`` file (fields per sentencepiece_model.proto, defaults as proto2 declares)."""
    try:
        model = parse_sp_model(Path(path).read_bytes())
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise UsageError(f"{path}: not a SentencePiece model file ({exc})") from exc
    if not model.pieces:
        raise UsageError(f"{path}: not a SentencePiece model file (no pieces)")
    return model


def parse_sp_model(data: bytes) -> SpModel:
    model = SpModel()
    for number, value in _proto_fields(data):
        if number == 1 and isinstance(value, bytes):  # SentencePiece
            model.pieces.append(_sp_piece(value))
        elif number == 2 and isinstance(value, bytes):  # TrainerSpec
            for n, v in _proto_fields(value):
                if n == 3 and isinstance(v, int):
                    model.model_type = v
                elif n == 35 and isinstance(v, int):
                    model.byte_fallback = bool(v)
                elif n == 40 and isinstance(v, int):
                    model.unk_id = v
        elif number == 3 and isinstance(value, bytes):  # NormalizerSpec
            for n, v in _proto_fields(value):
                if n == 1 and isinstance(v, bytes):
                    model.normalizer_name = v.decode("utf-8")
                elif n == 2 and isinstance(v, bytes):
                    model.precompiled_charsmap = v
                elif n == 3 and isinstance(v, int):
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and isinstance(v, int):
                    model.remove_extra_whitespaces = bool(v)
                elif n == 5 and isinstance(v, int):
                    model.escape_whitespaces = bool(v)
    return model


def piece_entries(pieces: list[str], kind: int, score: float = 0.0) -> bytes:
    """ModelProto `pieces` entries (field 1: SentencePiece {piece = 1, score = 2, type = 3}) to append to a model."""
    out = b""
    for piece in pieces:
        body = (
            _field_bytes(1, piece.encode("utf-8")) + b"\x15" + struct.pack("<f", score) + bytes([0x18, kind])
        )
        out += _field_bytes(1, body)
    return out


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint_bytes((number << 3) | 2) + _varint_bytes(len(payload)) + payload


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

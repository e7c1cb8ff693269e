"""The records of a data file one at a time: `.jsonl` line by line, a `.json` list in chunks, never the whole file.

Lines end at \\n, \\r\\n or \\r only (U+2028 and U+0085 are valid inside JSON strings, where str.splitlines() would
cut them); a byte-order mark is fine. Every problem names the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError


def records(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        # A byte-order mark, as some editors write, is fine. Lines end at \n, \r\n or \r only: U+2028 and U+0085
        # are valid inside JSON strings, where str.splitlines() would cut them.
        with file.open(encoding="utf-8-sig", newline=None) as handle:
            reader = _jsonl_records if file.suffix == ".jsonl" else _json_array_records
            yield from reader(file, handle)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"{file}: cannot read it ({exc.strerror})") from None


CHUNK = 1 << 20  # characters read at a time from a .json file


def _json_array_records(file: Path, handle) -> Iterator[tuple[str, dict[str, Any]]]:
    """The records of a .json list one at a time, read in chunks: a large file is never held in memory whole
    (json.load would hold the text and every record at once). Errors name the line, as json.loads would."""
    reader = _JsonList(file, handle)
    if reader.next_char() != "[":
        raise UsageError(f"{file}: a .json data file must hold a list of records")
    reader.take(1)
    index = 0
    while (char := reader.next_char()) != "]":
        if not char:
            raise UsageError(f"{file}:{reader.line}: invalid JSON (the list of records is not closed with ])")
        if index and char != ",":
            raise UsageError(
                f"{file}:{reader.line}: invalid JSON (expected ',' or ']' after record {index - 1})"
            )
        if index:
            reader.take(1)
            reader.next_char()  # the record starts after the white space (or runs into the end: an error)
        origin = f"{file} record {index}"
        yield origin, as_record(reader.record(), origin)
        index += 1
    if reader.buffer[1:].strip() or handle.read().strip():
        raise UsageError(f"{file}: invalid JSON (text after the ] that closes the list of records)")


class _JsonList:
    """The unread text of a .json file, a chunk at a time, and the line it starts on."""

    def __init__(self, file: Path, handle) -> None:
        self.file, self.handle = file, handle
        self.buffer, self.line, self.at_end = "", 1, False
        self.decoder = json.JSONDecoder()

    def read_more(self, size: int = CHUNK) -> None:
        chunk = self.handle.read(size)
        self.at_end, self.buffer = not chunk, self.buffer + chunk

    def take(self, count: int) -> None:
        self.line += self.buffer.count("\n", 0, count)
        self.buffer = self.buffer[count:]

    def next_char(self) -> str:
        """The next character that is not white space (consumed up to it), or "" at the end of the file."""
        while not self.buffer.lstrip():
            if self.at_end:
                return ""
            self.take(len(self.buffer))
            self.read_more()
        self.take(len(self.buffer) - len(self.buffer.lstrip()))
        return self.buffer[0]

    def record(self) -> Any:
        while True:
            try:
                record, end = self.decoder.raw_decode(self.buffer)
            except json.JSONDecodeError as exc:
                if not self.at_end:  # the record may go on in the next chunk
                    self.read_more(max(CHUNK, len(self.buffer)))
                    continue
                column = f" at column {exc.colno}" if exc.lineno > 1 else ""  # the buffer starts mid-line
                raise UsageError(
                    f"{self.file}:{self.line + exc.lineno - 1}: invalid JSON ({exc.msg}{column})"
                ) from None
            except RecursionError:
                raise UsageError(f"{self.file}: JSON nested too deeply to be a data record") from None
            self.take(end)
            return record


def _jsonl_records(file: Path, handle) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        origin = f"{file}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{origin}: invalid JSON line ({exc.msg} at column {exc.colno}); fix or remove it"
            ) from None
        except RecursionError:
            raise UsageError(f"{origin}: JSON nested too deeply to be a data record") from None
        yield origin, as_record(record, origin)


def as_record(record: Any, origin: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise UsageError(f"{origin}: expected a JSON object, got {type(record).__name__}")
    return record

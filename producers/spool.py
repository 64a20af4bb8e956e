"""The SDK's durable spool: an append-only log on disk between the hand-off queue and Kafka.

Every event the background worker accepts is appended here before it is produced, and the spool's
cursor only moves past it once Kafka acknowledged it. So an event acknowledged to the spool
survives kill -9 of the process (it is in the page cache, which outlives the process) and is
produced, in order, by the next process that opens the spool; and while the broker or the registry
is away, events simply accumulate here until the path is back.

Layout: numbered segment files of records framed as
``<payload length: u32><crc32 of payload: u32><payload>`` with payload ``<kind: u8><key length:
u16><key><value>``; a ``cursor`` file names the first record not yet acknowledged. A torn record at
the end of the last segment (a crash mid-write) fails its length or checksum and is cut off when
the spool is opened. The spool is bounded: an append that would exceed ``max_bytes`` is refused
and the caller counts the drop.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

_HEADER = struct.Struct("<II")
_PAYLOAD_HEAD = struct.Struct("<BH")
SEGMENT_SUFFIX = ".seg"


# Named tuples rather than dataclasses: one of each is made per event on the worker's hot path,
# and tuples compare (and so order positions) for free.
class Position(NamedTuple):
    """Where a record starts: segment number and byte offset in it."""

    segment: int
    offset: int


class SpooledRecord(NamedTuple):
    position: Position
    next_position: Position
    kind: int
    key: bytes
    value: bytes


def _segment_name(number: int) -> str:
    return f"{number:012d}{SEGMENT_SUFFIX}"


class Spool:
    """An append-only, bounded, crash-safe record log with one reader (the worker).

    Appends may come from several threads; reading and acknowledging are the worker's alone.
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cursor_path = directory / "cursor"
        segments = self._segments()
        self._committed = self._read_cursor(segments)
        if segments:
            self._recover_tail(segments[-1])
        self._write_segment = segments[-1] if segments else self._committed.segment
        self._writer: BinaryIO = self._open_writer(self._write_segment)
        # Tracked here: asking a buffered file for its position costs a system call per record.
        self._offset = self._writer.seek(0, os.SEEK_END)
        self._size = sum((directory / _segment_name(n)).stat().st_size for n in self._segments())

    # --- writing -------------------------------------------------------------------------------

    def append(self, kind: int, key: bytes, value: bytes) -> SpooledRecord | None:
        """Append one record and say where it went; None when the spool is full (the caller counts drops)."""
        payload = _PAYLOAD_HEAD.pack(kind, len(key)) + key + value
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._size + len(frame) > self.max_bytes:
                return None
            if self._offset >= self.segment_bytes:
                self._rotate()
            offset = self._offset
            self._writer.write(frame)
            self._offset += len(frame)
            self._size += len(frame)
            segment = self._write_segment
        return SpooledRecord(
            Position(segment, offset), Position(segment, offset + len(frame)), kind, key, value
        )

    def flush(self) -> None:
        """Hand appended records to the OS: from here on they survive the death of this process."""
        with self._lock:
            self._writer.flush()

    def sync(self) -> None:
        """Also force them to the device (survives power loss); costly, used on close."""
        with self._lock:
            self._writer.flush()
            os.fsync(self._writer.fileno())

    def _rotate(self) -> None:
        self._writer.flush()
        self._writer.close()
        self._write_segment += 1
        self._writer = self._open_writer(self._write_segment)
        self._offset = 0

    def _open_writer(self, number: int) -> BinaryIO:
        return (self.directory / _segment_name(number)).open("ab")

    # --- reading and acknowledging -------------------------------------------------------------

    @property
    def committed(self) -> Position:
        """The first record not yet acknowledged."""
        return self._committed

    @property
    def size_bytes(self) -> int:
        return self._size

    def read(self, start: Position, limit: int) -> Iterator[SpooledRecord]:
        """Up to `limit` complete records from `start`, in order (a record being written is not seen)."""
        self.flush()
        position = start
        produced = 0
        while produced < limit:
            path = self.directory / _segment_name(position.segment)
            if not path.exists():
                return
            with path.open("rb") as segment:
                segment.seek(position.offset)
                while produced < limit:
                    record = self._read_one(segment, position)
                    if record is None:
                        break
                    yield record
                    produced += 1
                    position = record.next_position
            with self._lock:
                last_segment = self._write_segment
            if position.segment >= last_segment:
                return
            position = Position(position.segment + 1, 0)

    @staticmethod
    def _read_one(segment: BinaryIO, position: Position) -> SpooledRecord | None:
        header = segment.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None
        length, checksum = _HEADER.unpack(header)
        payload = segment.read(length)
        if len(payload) < length or zlib.crc32(payload) != checksum:
            return None
        kind, key_length = _PAYLOAD_HEAD.unpack_from(payload)
        key_end = _PAYLOAD_HEAD.size + key_length
        return SpooledRecord(
            position=position,
            next_position=Position(position.segment, position.offset + _HEADER.size + length),
            kind=kind,
            key=payload[_PAYLOAD_HEAD.size : key_end],
            value=payload[key_end:],
        )

    def commit(self, position: Position) -> None:
        """Everything before `position` reached Kafka: persist the cursor and free whole segments."""
        if position <= self._committed:
            return
        self._committed = position
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
        tmp.replace(self._cursor_path)
        for number in self._segments():
            if number >= position.segment:
                break
            path = self.directory / _segment_name(number)
            with self._lock:
                self._size -= path.stat().st_size
                path.unlink()

    def pending(self) -> bool:
        """True when records after the cursor wait to be acknowledged."""
        return next(iter(self.read(self._committed, 1)), None) is not None

    def close(self) -> None:
        self.sync()
        with self._lock:
            self._writer.close()

    # --- opening -------------------------------------------------------------------------------

    def _segments(self) -> list[int]:
        return sorted(int(p.name[: -len(SEGMENT_SUFFIX)]) for p in self.directory.glob(f"*{SEGMENT_SUFFIX}"))

    def _read_cursor(self, segments: list[int]) -> Position:
        try:
            data = json.loads(self._cursor_path.read_text())
            return Position(int(data["segment"]), int(data["offset"]))
        except (FileNotFoundError, ValueError, KeyError):
            return Position(segments[0] if segments else 0, 0)

    def _recover_tail(self, number: int) -> None:
        """Cut a torn record off the end of the last segment (a crash in the middle of a write)."""
        path = self.directory / _segment_name(number)
        good_end = 0
        with path.open("rb") as segment:
            position = Position(number, 0)
            while (record := self._read_one(segment, position)) is not None:
                position = record.next_position
            good_end = position.offset
        if good_end < path.stat().st_size:
            with path.open("r+b") as segment:
                segment.truncate(good_end)

"""The spool: ordered, bounded, crash-safe, and freed as Kafka acknowledges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from onfinish.producers.spool import Position, Spool
from tests.conftest import REPO


def _records(
    spool: Spool, start: Position | None = None, limit: int = 10_000
) -> list[tuple[int, bytes, bytes]]:
    return [(r.kind, r.key, r.value) for r in spool.read(start or spool.committed, limit)]


def test_records_come_back_in_order_across_segments(tmp_path: Path):
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1_000)
    sent = [(i % 2, f"k{i}".encode(), os.urandom(50)) for i in range(200)]
    for kind, key, value in sent:
        assert spool.append(kind, key, value)
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert _records(spool) == sent


def test_commit_moves_the_cursor_frees_segments_and_survives_reopening(tmp_path: Path):
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1_000)
    for i in range(100):
        spool.append(0, b"k", str(i).encode() * 20)
    records = list(spool.read(spool.committed, 60))
    size_before = spool.size_bytes
    spool.commit(records[-1].next_position)
    assert spool.size_bytes < size_before
    spool.close()
    reopened = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1_000)
    assert [v for _, _, v in _records(reopened)] == [str(i).encode() * 20 for i in range(60, 100)]
    assert reopened.pending()


def test_a_full_spool_refuses_appends(tmp_path: Path):
    spool = Spool(tmp_path, max_bytes=1_000)
    accepted = sum(spool.append(0, b"key", b"x" * 100) is not None for _ in range(20))
    assert 0 < accepted < 20
    assert spool.size_bytes <= 1_000
    spool.commit(list(spool.read(spool.committed, 1_000))[-1].next_position)
    # Acknowledged records in the current segment stay on disk until the segment rolls over.
    assert not spool.pending()


def test_a_torn_record_at_the_end_is_cut_off(tmp_path: Path):
    spool = Spool(tmp_path, max_bytes=1_000_000)
    for i in range(5):
        spool.append(1, b"k", f"value-{i}".encode())
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with segment.open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00garbage")  # a header promising 64 bytes that never came
    reopened = Spool(tmp_path, max_bytes=1_000_000)
    assert [v for _, _, v in _records(reopened)] == [f"value-{i}".encode() for i in range(5)]
    reopened.append(1, b"k", b"after-crash")
    assert _records(reopened)[-1] == (1, b"k", b"after-crash")


def test_records_flushed_before_kill_9_are_all_there(tmp_path: Path):
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from onfinish.producers.spool import Spool\n"
        "spool = Spool(Path(sys.argv[1]), max_bytes=10_000_000, segment_bytes=4096)\n"
        "for i in range(1000):\n"
        "    spool.append(0, b'k', b'event-%d' % i)\n"
        "spool.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True)
    assert result.returncode == -signal.SIGKILL
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=4096)
    assert [v for _, _, v in _records(spool)] == [b"event-%d" % i for i in range(1000)]


def test_append_says_where_the_record_went(tmp_path: Path):
    spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=100)
    appended = [spool.append(0, b"k", b"v" * 60) for _ in range(3)]
    assert all(r is not None for r in appended)
    assert [r.position for r in spool.read(spool.committed, 10)] == [r.position for r in appended if r]

"""Decision log: real SQLite files in WAL mode, batches, duplicates, disk full."""

from __future__ import annotations

import pathlib
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from converter.errors import LinesideError
from edge.sinks import DiskFullError, is_disk_full
from edge.sinks.decision_log import DecisionLog, DecisionLogError


def result(seq: int, camera_id: str = "cam0", **extra) -> dict:
    base = {
        "camera_id": camera_id,
        "seq": seq,
        "capture_ts": 1_700_000_000.0 + seq,
        "decided_ts": 1_700_000_000.05 + seq,
        "decision": "FAIL" if seq % 2 else "PASS",
        "reason": "defect_area>=min_area" if seq % 2 else "clean",
        "defect_area": np.int64(120 * (seq % 2)),
        "defect_count": 1 if seq % 2 else 0,
        "boxes": [[np.int32(3), 4, 10, 12]] if seq % 2 else [],
        "model_id": "dagm-class1@abc123",
        "worker_id": "w0",
        "backend": "onnxruntime",
        "latencies": {"infer": np.float32(4.5), "e2e": 9.25},
        "mask": np.zeros((4, 4), np.uint8),  # results carry more than the log stores
    }
    base.update(extra)
    return base


@pytest.fixture
def dlog(tmp_path):
    log = DecisionLog(tmp_path / "sub" / "decisions.sqlite")
    yield log
    log.close()


def test_creates_dirs_and_runs_in_wal_mode(dlog, tmp_path):
    assert (tmp_path / "sub" / "decisions.sqlite").is_file()
    assert dlog.query("PRAGMA journal_mode")[0][0] == "wal"
    assert dlog.query("PRAGMA synchronous")[0][0] == 1  # NORMAL
    # WAL is a property of the file: a fresh connection sees it too.
    with closing(sqlite3.connect(tmp_path / "sub" / "decisions.sqlite")) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {row[1]: row[2] for row in dlog.query("PRAGMA index_list(decisions)")}
    unique = [name for name, is_unique in indexes.items() if is_unique]
    assert unique, indexes
    assert [r[2] for r in dlog.query(f"PRAGMA index_info({unique[0]})")] == ["camera_id", "epoch", "seq"]


def test_write_many_encodes_and_counts(dlog):
    assert dlog.write_many([result(i) for i in range(10)]) == 10
    assert dlog.count() == 10
    row = dlog.get("cam0", 1)
    assert row["decision"] == "FAIL"
    assert row["defect_area"] == 120
    assert row["boxes"] == [[3, 4, 10, 12]]
    assert row["latencies"] == {"infer": 4.5, "e2e": 9.25}
    assert row["truth"] is None
    assert row["capture_ts"] == pytest.approx(1_700_000_001.0)


def test_missing_optional_keys_are_null_and_truth_is_json(dlog):
    minimal = {"camera_id": "cam1", "seq": 5, "decision": "NO_DECISION"}
    assert dlog.write_many([minimal, result(6, truth={"defect": True, "area": 40})]) == 2
    row = dlog.get("cam1", 5)
    assert row["reason"] is None and row["boxes"] is None and row["latencies"] is None
    assert dlog.get("cam0", 6)["truth"] == {"defect": True, "area": 40}


def test_duplicates_are_ignored_and_not_counted(dlog, caplog):
    assert dlog.write_many([result(1), result(2)]) == 2
    assert dlog.write_many([result(2), result(3), result(3), result(1, camera_id="cam9")]) == 2
    assert "already logged" in caplog.text
    assert dlog.count() == 4
    assert dlog.duplicates == 2
    assert dlog.get("cam0", 2)["decision"] == "PASS"  # the first write stands


def test_bad_rows_are_rejected_without_losing_the_batch(dlog):
    batch = [result(1), {"camera_id": "cam0", "seq": 2}, result(3, decision="OK"), result(4)]
    assert dlog.write_many(batch) == 2
    assert dlog.rejected == 2
    assert [r[0] for r in dlog.query("SELECT seq FROM decisions ORDER BY seq")] == [1, 4]


def test_data_survives_close_and_wal_is_checkpointed(tmp_path):
    path = tmp_path / "d.sqlite"
    log = DecisionLog(path)
    log.write_many([result(i) for i in range(100)])
    wal = path.with_name(path.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0  # committed rows sit in the WAL
    log.close()
    log.close()  # twice is fine
    assert not wal.exists() or wal.stat().st_size == 0
    with pytest.raises(RuntimeError):
        log.count()
    reopened = DecisionLog(path)
    assert reopened.count() == 100
    assert reopened.write_many([result(5)]) == 0  # duplicates across restarts too
    reopened.close()


def test_disk_full_raises_disk_full_error_and_log_stays_usable(dlog):
    dlog.write_many([result(0)])
    pages = dlog.query("PRAGMA page_count")[0][0]
    # SQLite reports SQLITE_FULL ("database or disk is full") when the file hits its cap.
    dlog.query(f"PRAGMA max_page_count = {pages + 1}")
    big = [result(i, reason="x" * 2000) for i in range(1, 200)]
    with pytest.raises(DiskFullError) as info:
        dlog.write_many(big)
    message = str(info.value)
    assert "decisions.sqlite" in message and "free space" in message
    assert isinstance(info.value, LinesideError)
    assert dlog.count() == 1  # the whole batch rolled back
    dlog.query("PRAGMA max_page_count = 1000000")
    assert dlog.write_many(big) == 199


def test_not_a_database_is_one_clear_error(tmp_path):
    bogus = tmp_path / "decisions.sqlite"
    bogus.write_bytes(b"this is not sqlite, it is a text file " * 100)
    with pytest.raises(DecisionLogError, match=r"decisions\.sqlite.*move a non-database file away"):
        DecisionLog(bogus)


def test_is_disk_full_recognises_enospc():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert not is_disk_full(OSError(13, "Permission denied"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))


def test_real_full_disk_raises_disk_full_error(tiny_fs):
    root = tiny_fs(256 * 1024)
    log = DecisionLog(root / "decisions.sqlite")
    big = [result(i, reason="x" * 4000) for i in range(200)]  # ~800 kB, the disk holds 256 kB
    with pytest.raises(DiskFullError, match="tinyfs"):
        for start in range(0, len(big), 10):
            log.write_many(big[start : start + 10])
    written = log.count()
    assert written > 0
    log.close()  # the checkpoint needs space too; close logs that and keeps the WAL
    with closing(sqlite3.connect(root / "decisions.sqlite")) as reader:
        assert reader.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == written


def test_a_log_from_an_older_schema_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    """A v1 file (frames keyed by camera and seq only) would silently drop a restarted
    camera's decisions as duplicates: it is refused with one line, not migrated in place."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, camera_id TEXT, seq INTEGER)")
    with pytest.raises(DecisionLogError, match=r"schema version 1.*move the old file away"):
        DecisionLog(path)
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(decisions)")]
    assert columns == ["id", "camera_id", "seq"]


def test_history_pages_stay_put_while_the_line_keeps_logging(tmp_path: pathlib.Path) -> None:
    """The UI's history reads this log while the line writes it: page 2, asked with page 1's
    ``as_of``, holds the rows right after page 1's even when newer decisions came between."""
    from edge.config import parse_config
    from edge.ui.state import LineState

    path = tmp_path / "decisions.sqlite"
    log = DecisionLog(path)
    log.write_many(result(seq) for seq in range(1, 21))
    state = LineState(parse_config({"cameras": [{"id": "cam0"}], "sinks": {"decision_log": str(path)}}))
    first = state.history(per_page=5)
    assert [r["seq"] for r in first["rows"]] == [20, 19, 18, 17, 16] and first["total"] == 20
    log.write_many(result(seq) for seq in range(21, 24))  # the line goes on
    second = state.history(per_page=5, page=2, as_of=first["as_of"])
    assert [r["seq"] for r in second["rows"]] == [15, 14, 13, 12, 11]
    assert second["total"] == 20 and second["as_of"] == first["as_of"]
    # without it the offset counts from the newest row: page 2 repeats page 1's last three
    assert [r["seq"] for r in state.history(per_page=5, page=2)["rows"]] == [18, 17, 16, 15, 14]
    fresh = state.history(per_page=5)
    assert fresh["total"] == 23 and fresh["as_of"] > first["as_of"]
    log.close()

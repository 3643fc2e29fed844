"""The decision log: one SQLite row per decided frame, so every OK/NG can be traced later.

The collector calls ``write_many`` with a batch of result dicts; a batch is one
transaction, which keeps the per-frame cost low (one fsync per batch at most).
The database runs in WAL mode with ``synchronous=NORMAL``: a crash of the daemon
loses nothing committed, a power cut may lose the last batches but never corrupts
the file, and readers (tools, a UI) never block the writer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from edge.sinks import DiskFullError, SinkError, is_disk_full, json_default

__all__ = ["COLUMNS", "DECISIONS", "DecisionLog", "DecisionLogError", "DiskFullError"]

log = logging.getLogger(__name__)

#: the values the ``decision`` column may hold
DECISIONS = ("PASS", "FAIL", "NO_DECISION")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    camera_id TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    capture_ts REAL,
    decided_ts REAL,
    decision TEXT NOT NULL,
    reason TEXT,
    defect_area INTEGER,
    defect_count INTEGER,
    boxes TEXT,
    model_id TEXT,
    worker_id TEXT,
    backend TEXT,
    latencies TEXT,
    truth TEXT,
    UNIQUE (camera_id, epoch, seq)
);
CREATE INDEX IF NOT EXISTS decisions_capture_ts ON decisions (capture_ts);
"""
# 2: frames are named (camera_id, epoch, seq), so a restarted camera's seq 0 is a new row
_SCHEMA_VERSION = 2

# Column name -> how a Python value is turned into what SQLite stores. numpy scalars
# do not bind in sqlite3, so every number goes through int()/float().
_JSON_COLUMNS = ("boxes", "latencies", "truth")
_INT_COLUMNS = ("epoch", "seq", "defect_area", "defect_count")
_REAL_COLUMNS = ("capture_ts", "decided_ts")
#: the columns ``write_many`` takes from each result dict (``id`` is assigned by SQLite)
COLUMNS = (
    "camera_id",
    "seq",
    "epoch",
    "capture_ts",
    "decided_ts",
    "decision",
    "reason",
    "defect_area",
    "defect_count",
    "boxes",
    "model_id",
    "worker_id",
    "backend",
    "latencies",
    "truth",
)
_INSERT = f"INSERT OR IGNORE INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class DecisionLogError(SinkError):
    """The decision log cannot be opened or written (bad path, not a database, read-only)."""


def _encode_json(value: Any) -> str | None:
    if value is None or isinstance(value, str):  # a string is taken as already-encoded JSON
        return value
    return json.dumps(value, default=json_default, separators=(",", ":"))


def _row(result: Mapping[str, Any]) -> tuple[Any, ...]:
    """One result dict -> the INSERT parameters; raises ValueError/TypeError on a bad row."""
    decision = result["decision"]
    if decision not in DECISIONS:
        msg = f"decision must be one of {DECISIONS}, got {decision!r}"
        raise ValueError(msg)
    values: list[Any] = []
    for col in COLUMNS:
        # epoch 0 = a source without camera-process epochs (tools, tests)
        value = result.get(col, 0 if col == "epoch" else None)
        if value is not None:
            if col in _JSON_COLUMNS:
                value = _encode_json(value)
            elif col in _INT_COLUMNS:
                value = int(value)
            elif col in _REAL_COLUMNS:
                value = float(value)
            else:
                value = str(value)
        values.append(value)
    if values[0] is None or values[1] is None:
        msg = "camera_id and seq are required"
        raise ValueError(msg)
    return tuple(values)


class DecisionLog:
    """Append-only SQLite log of decisions, keyed by (camera_id, seq).

    Safe to share between threads (one lock around the connection). Unknown keys in a
    result dict (the mask, the header) are ignored, missing optional ones stored as NULL.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        #: result dicts refused because they lacked camera_id/seq/decision or had a bad value
        self.rejected = 0
        #: rows inserted by this instance (duplicates not counted)
        self.written = 0
        #: rows ignored because (camera_id, seq) was already logged
        self.duplicates = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per batch.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            self._raise_open_error(exc)
        try:
            self._setup(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (OSError, sqlite3.Error)):
                self._raise_open_error(exc)
            raise
        self._conn: sqlite3.Connection | None = conn

    def _raise_open_error(self, exc: BaseException) -> NoReturn:
        if is_disk_full(exc):
            raise DiskFullError(self.path, "decision log") from exc
        msg = (
            f"cannot open the decision log at {self.path}: {exc}; "
            "point decision_log.path at a writable SQLite file (move a non-database file away)"
        )
        raise DecisionLogError(msg) from exc

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Network filesystems cannot do WAL's shared memory; it still works, only slower.
            log.warning(
                "decision log %s: WAL refused (journal_mode=%s); writes lock readers", self.path, mode
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        # Check the version before creating anything, so an old file is refused untouched.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            version = 1  # a file from before versioning: tables, no user_version
        if version == 0:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        elif version != _SCHEMA_VERSION:
            msg = (
                f"decision log {self.path} has schema version {version}, this lineside writes "
                f"version {_SCHEMA_VERSION}; move the old file away or point sinks.decision_log elsewhere"
            )
            raise DecisionLogError(msg)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            msg = f"decision log {self.path} used after close()"
            raise RuntimeError(msg)
        return self._conn

    def write_many(self, results: Iterable[Mapping[str, Any]]) -> int:
        """Insert a batch in one transaction; returns how many rows were new.

        A (camera_id, seq) already in the log is ignored and not counted. A malformed
        result is logged, counted in ``rejected`` and skipped, so one bad row never
        loses the rest of the batch. Raises DiskFullError when the disk is full (the
        batch is rolled back, the log stays usable).
        """
        rows = []
        for result in results:
            try:
                rows.append(_row(result))
            except (KeyError, ValueError, TypeError) as exc:
                self.rejected += 1
                log.warning(
                    "decision log: rejected result camera=%r seq=%r: %s",
                    result.get("camera_id"),
                    result.get("seq"),
                    exc,
                )
        if not rows:
            return 0
        with self._lock:
            conn = self._connection()
            before = conn.total_changes
            try:
                conn.execute("BEGIN")
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if is_disk_full(exc):
                    raise DiskFullError(self.path, "decision log") from exc
                msg = f"cannot write the decision log at {self.path}: {exc}; check the disk and permissions"
                raise DecisionLogError(msg) from exc
            inserted = conn.total_changes - before
        self.written += inserted
        if inserted < len(rows):
            first = self.duplicates == 0
            self.duplicates += len(rows) - inserted
            if first:
                # Usually a restart that numbers frames from 0 again: those decisions are not logged.
                log.warning(
                    "decision log %s: %d results had a (camera_id, seq) already logged and were ignored; "
                    "sequence numbers must not restart while the log is kept",
                    self.path,
                    len(rows) - inserted,
                )
        return inserted

    def write(self, result: Mapping[str, Any]) -> int:
        """Insert one result (prefer ``write_many``: one transaction per row is slow)."""
        return self.write_many([result])

    def count(self) -> int:
        """Rows in the log (all of them, not only this instance's)."""
        return int(self.query("SELECT COUNT(*) FROM decisions")[0][0])

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all rows (for tests and tools, not the hot path)."""
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def get(self, camera_id: str, seq: int) -> dict[str, Any] | None:
        """One logged decision as a dict with its JSON columns decoded, or None."""
        with self._lock:
            cur = self._connection().execute(
                "SELECT * FROM decisions WHERE camera_id = ? AND seq = ?", (camera_id, int(seq))
            )
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        if row is None:
            return None
        out = dict(zip(names, row, strict=True))
        for col in _JSON_COLUMNS:
            if out[col] is not None:
                out[col] = json.loads(out[col])
        return out

    def flush(self) -> None:
        """Move the WAL into the database file now (commits are already crash-safe)."""
        with self._lock:
            if self._conn is not None:
                self._checkpoint(self._conn, "PASSIVE")

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close; safe to call twice.

        Never raises for a full disk: every committed row is already safe in the WAL,
        and SQLite finishes the checkpoint the next time the log is opened.
        """
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                self._checkpoint(conn, "TRUNCATE")
            except DiskFullError as exc:
                log.error("%s; the WAL is kept and checkpointed at the next open", exc)
            finally:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        try:
            busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise DiskFullError(self.path, "decision log") from exc
            raise
        if busy:
            # A reader holds the WAL; the rest is checkpointed by whoever closes last.
            log.info("decision log %s: checkpoint incomplete, a reader is active", self.path)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

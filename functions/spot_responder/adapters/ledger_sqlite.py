"""The embedded ledger for laptops and tests: one SQLite file that persists between runs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from spot_responder.ledger import (
    JOB_SK_PREFIX,
    NOTICE_SK,
    ConditionalLedger,
    JobHit,
    LedgerEntry,
    LedgerUnavailable,
    job_hits_of,
)

DEFAULT_PATH = Path.home() / ".spot-responder" / "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    job_key TEXT,
    recorded_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
);
CREATE INDEX IF NOT EXISTS items_by_job ON items (job_key, recorded_at);
"""


class SqliteLedger(ConditionalLedger):
    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnavailable(f"cannot open ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _read(self, key: str) -> LedgerEntry | None:
        row = self._db.execute(
            "SELECT doc FROM items WHERE pk = ? AND sk = ?", (key, NOTICE_SK)
        ).fetchone()
        return None if row is None else LedgerEntry.from_dict(json.loads(row[0]))

    def _write_if(self, entry: LedgerEntry, expected_updated_at: str | None) -> bool:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT updated_at FROM items WHERE pk = ? AND sk = ?", (entry.key, NOTICE_SK)
            ).fetchone()
            current = None if row is None else row[0]
            if current != expected_updated_at:
                self._db.execute("ROLLBACK")
                return False
            self._put(entry)
            self._db.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise LedgerUnavailable(f"ledger write failed: {exc}") from exc

    def _write_jobs(self, entry: LedgerEntry) -> None:
        """Nothing left to do: `_write_if` wrote the job rows in the same transaction."""

    def _put(self, entry: LedgerEntry) -> None:
        """The notice row and its job rows (inside the caller's transaction)."""
        self._db.execute(
            "INSERT OR REPLACE INTO items VALUES (?, ?, NULL, ?, ?, ?)",
            (
                entry.key,
                NOTICE_SK,
                entry.recorded_at,
                entry.updated_at,
                json.dumps(entry.to_dict()),
            ),
        )
        self._db.execute(
            "DELETE FROM items WHERE pk = ? AND sk LIKE ?", (entry.key, JOB_SK_PREFIX + "%")
        )
        for hit in job_hits_of(entry):
            self._db.execute(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.key,
                    JOB_SK_PREFIX + hit.job_id,
                    hit.job_key,
                    hit.recorded_at,
                    entry.updated_at,
                    json.dumps(hit.__dict__),
                ),
            )

    def entries(self, limit: int = 1000) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT doc FROM items WHERE sk = ? ORDER BY recorded_at DESC LIMIT ?",
            (NOTICE_SK, limit),
        ).fetchall()
        return [LedgerEntry.from_dict(json.loads(row[0])) for row in rows]

    def job_hits(self, cluster_job_key: str | None = None) -> list[JobHit]:
        if cluster_job_key is None:
            rows = self._db.execute(
                "SELECT doc FROM items WHERE job_key IS NOT NULL ORDER BY job_key, recorded_at"
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT doc FROM items WHERE job_key = ? ORDER BY recorded_at", (cluster_job_key,)
            ).fetchall()
        return [JobHit(**json.loads(row[0])) for row in rows]

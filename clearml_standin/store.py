"""Durable state of the local ClearML stand-in: JSON documents and events in SQLite (WAL).

Every write is committed before the HTTP response that acknowledges it is sent, so a `kill -9`
of the server loses nothing a client was told had been stored. Documents are also kept in an
in-memory index (the server is the only writer), which makes the id-list lookups the status
poller issues every tick cheap whatever the number of tasks.

The servers reach the store only through `Store.run`: one worker thread does every read and write
in arrival order (so handlers never interleave, as they did not when they ran on the event loop),
and the event loop stays free for the file server, the web pages and the next request's I/O while
a slow handler works.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

Doc = dict[str, Any]
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    doc  TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    task      TEXT NOT NULL,
    type      TEXT NOT NULL,
    metric    TEXT,
    variant   TEXT,
    iter      INTEGER,
    timestamp INTEGER,
    doc       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_task_type ON events (task, type, seq);
CREATE INDEX IF NOT EXISTS events_point ON events (task, type, metric, variant, iter);
"""

# A scalar is one point per (task, metric, variant, iteration): reporting it again replaces it, as
# on a ClearML server. That also makes the SDK's resend of a batch whose answer was lost (a server
# killed between its commit and its reply) harmless instead of doubling the points.
POINT_TYPES = frozenset({"training_stats_scalar"})


class Store:
    """Documents by (kind, id) plus an event log (scalar points replaced, the rest appended), both in
    one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash may lose the tail.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._undo: list[dict[tuple[str, str], Doc | None]] = []  # one per open (nested) transaction
        self._docs: dict[str, dict[str, Doc]] = {}
        for kind, id_, raw in self._db.execute("SELECT kind, id, doc FROM docs"):
            self._docs.setdefault(kind, {})[id_] = json.loads(raw)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="standin-store")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the store's one worker thread: the servers' only way in."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes so that they are committed (or dropped) together. Nested, an inner block is
        a savepoint: its failure drops only its own writes (a batch call keeps the items that
        succeeded), while the outer block still commits or drops everything."""
        with self._lock:
            level = len(self._undo)
            self._db.execute("BEGIN IMMEDIATE" if level == 0 else f"SAVEPOINT sp{level}")
            self._undo.append({})
            try:
                yield
            except BaseException:
                undo = self._undo.pop()
                self._db.execute("ROLLBACK" if level == 0 else f"ROLLBACK TO sp{level}")
                if level:
                    self._db.execute(f"RELEASE sp{level}")
                for (kind, id_), old in undo.items():
                    if old is None:
                        self._docs.get(kind, {}).pop(id_, None)
                    else:
                        self._docs.setdefault(kind, {})[id_] = old
                raise
            undo = self._undo.pop()
            if level == 0:
                self._db.execute("COMMIT")
            else:
                self._db.execute(f"RELEASE sp{level}")
                for key, old in undo.items():  # the enclosing block's older value wins
                    self._undo[-1].setdefault(key, old)

    def _remember(self, kind: str, id_: str) -> None:
        """Keep a doc's value from before this (innermost) block once, so a rollback restores the
        in-memory index."""
        if (kind, id_) not in self._undo[-1]:
            self._undo[-1][(kind, id_)] = self._docs.get(kind, {}).get(id_)

    # -- documents ----------------------------------------------------------------------------
    def get(self, kind: str, id_: str) -> Doc | None:
        doc = self._docs.get(kind, {}).get(id_)
        return copy.deepcopy(doc) if doc is not None else None

    def get_many(self, kind: str, ids: Iterable[str]) -> list[Doc]:
        table = self._docs.get(kind, {})
        return [copy.deepcopy(table[i]) for i in ids if i in table]

    def all(self, kind: str) -> list[Doc]:
        """Every document of a kind (deep copies, safe to mutate)."""
        return [copy.deepcopy(d) for d in self._docs.get(kind, {}).values()]

    def iter_raw(self, kind: str) -> Iterable[Doc]:
        """Read-only view without copying: callers must not mutate what they get."""
        return self._docs.get(kind, {}).values()

    def count(self, kind: str) -> int:
        return len(self._docs.get(kind, {}))

    def put(self, kind: str, id_: str, doc: Doc) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO docs (kind, id, doc) VALUES (?, ?, ?)",
                (kind, id_, json.dumps(doc, default=str)),
            )
            self._remember(kind, id_)
            self._docs.setdefault(kind, {})[id_] = copy.deepcopy(doc)

    def delete(self, kind: str, id_: str) -> bool:
        with self.transaction():
            cur = self._db.execute("DELETE FROM docs WHERE kind = ? AND id = ?", (kind, id_))
            self._remember(kind, id_)
            self._docs.get(kind, {}).pop(id_, None)
            return cur.rowcount > 0

    # -- events -------------------------------------------------------------------------------
    def add_events(self, events: list[Doc]) -> int:
        rows = [
            (
                ev["task"],
                ev.get("type", ""),
                ev.get("metric"),
                ev.get("variant"),
                ev.get("iter"),
                ev.get("timestamp"),
                json.dumps(ev, default=str),
            )
            for ev in events
        ]
        points = {row[:5]: i for i, row in enumerate(rows) if row[1] in POINT_TYPES and row[4] is not None}
        # Within a batch the last report of a point wins too.
        rows = [row for i, row in enumerate(rows) if points.get(row[:5], i) == i]
        with self.transaction():
            self._db.executemany(
                "DELETE FROM events WHERE task = ? AND type = ? AND metric IS ? AND variant IS ? AND iter = ?",
                list(points),
            )
            self._db.executemany(
                "INSERT INTO events (task, type, metric, variant, iter, timestamp, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def events(self, task: str, types: Iterable[str] | None = None) -> list[Doc]:
        """A task's events in arrival order, optionally limited to some event types."""
        with self._lock:
            if types is None:
                cur = self._db.execute("SELECT doc FROM events WHERE task = ? ORDER BY seq", (task,))
            else:
                type_list = list(types)
                marks = ",".join("?" for _ in type_list)
                cur = self._db.execute(
                    f"SELECT doc FROM events WHERE task = ? AND type IN ({marks}) ORDER BY seq",
                    (task, *type_list),
                )
            return [json.loads(raw) for (raw,) in cur.fetchall()]

    def delete_events(self, task: str) -> int:
        with self.transaction():
            return self._db.execute("DELETE FROM events WHERE task = ?", (task,)).rowcount

    def event_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        with self._lock:
            self._db.close()

"""The results store: an SQLite file that every finished sweep point is written to at once.

One row per (sweep, point): the sweep id is a hash of the base scenario, so a changed
scenario starts a new sweep in the same file, and the point key is its canonical
overrides, so re-running a sweep skips what is already there and never stores a point
twice (the pair is the primary key). Rows are committed one by one, so an interrupted
sweep loses at most the points that were still running.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable, Optional

from moesim.errors import MoesimError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    sweep_id TEXT NOT NULL,
    point_key TEXT NOT NULL,
    overrides TEXT NOT NULL,
    status TEXT NOT NULL,          -- ok | error
    result TEXT,                   -- flat JSON of the StepResult figures
    error TEXT,
    seconds REAL,                  -- wall time of the simulation
    finished_at REAL NOT NULL,
    PRIMARY KEY (sweep_id, point_key)
)
"""


def check_store(path: str | Path) -> None:
    """Raise unless `path` can be a results store: absent (a sweep creates it), or an SQLite file that holds
    moesim's points or nothing yet. Read without writing: a damaged or foreign file is left as it was."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise MoesimError(f"{path}: not a usable results store ({error}); give another --store") from None
    if tables and "points" not in tables:
        raise MoesimError(
            f"{path}: not a moesim results store (it holds {', '.join(sorted(tables))}); give another --store"
        )


class ResultsStore:
    """Sweep results in an SQLite file (`create`: make the file and its table where absent; else it must be a
    store already, opened to read)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        check_store(self.path)
        if not create and not self.path.is_file():
            raise MoesimError(f"{self.path}: no such results store")
        try:
            self.connection = sqlite3.connect(self.path)
            if create:
                self.connection.execute(_SCHEMA)
                self.connection.commit()
            elif not self.connection.execute("SELECT name FROM sqlite_master WHERE name = 'points'").fetchone():
                raise MoesimError(f"{self.path}: an empty results store (no sweep has written to it)")
        except sqlite3.DatabaseError as error:
            raise MoesimError(f"{self.path}: not a usable results store ({error})") from None

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_keys(self, sweep_id: str, failed_too: bool = True) -> set[str]:
        """Keys of the stored points of a sweep (without `failed_too`: those that ran without an error)."""
        query = "SELECT point_key FROM points WHERE sweep_id = ?" + ("" if failed_too else " AND status = 'ok'")
        return {row[0] for row in self.connection.execute(query, (sweep_id,))}

    def forget_failed(self, sweep_id: str) -> int:
        """Remove a sweep's failed points (to run them again); how many were removed."""
        cursor = self.connection.execute("DELETE FROM points WHERE sweep_id = ? AND status = 'error'", (sweep_id,))
        self.connection.commit()
        return cursor.rowcount

    def write(
        self,
        sweep_id: str,
        point_key: str,
        overrides: dict[str, Any],
        result: Optional[dict[str, Any]],
        error: Optional[str],
        seconds: float,
    ) -> bool:
        """Store one finished point; False if it was already stored (never a duplicate)."""
        cursor = self.connection.execute(
            "INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sweep_id,
                point_key,
                json.dumps(overrides, default=str),
                "error" if error else "ok",
                json.dumps(result) if result is not None else None,
                error,
                seconds,
                time.time(),
            ),
        )
        self.connection.commit()
        return cursor.rowcount == 1

    def sweeps(self) -> list[tuple[str, int, float]]:
        """(sweep id, points stored, when its last point finished) of every sweep in the store, latest first."""
        query = (
            "SELECT sweep_id, COUNT(*), MAX(finished_at) FROM points GROUP BY sweep_id ORDER BY MAX(finished_at) DESC"
        )
        return [(str(sweep), int(count), float(last)) for sweep, count, last in self.connection.execute(query)]

    def rows(self, sweep_id: Optional[str] = None) -> list[dict[str, Any]]:
        """Every stored point as a flat dict: the overrides, status, error and the result figures."""
        query = "SELECT sweep_id, overrides, status, result, error, seconds FROM points"
        arguments: tuple[Any, ...] = ()
        if sweep_id:
            query += " WHERE sweep_id = ?"
            arguments = (sweep_id,)
        flat = []
        for sweep, overrides, status, result, error, seconds in self.connection.execute(
            query + " ORDER BY rowid", arguments
        ):
            row: dict[str, Any] = {
                "sweep_id": sweep,
                **json.loads(overrides),
                "status": status,
                "error": error,
                "sim_seconds": seconds,
            }
            row.update(json.loads(result) if result else {})
            flat.append(row)
        return flat


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def export_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    return path


def export_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    try:
        import pyarrow as pa  # optional: only --parquet needs it
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MoesimError("Parquet export needs pyarrow: pip install 'moesim[parquet]'") from None
    columns = _columns(rows)
    table = pa.table({column: [_plain(row.get(column)) for row in rows] for column in columns})
    pq.write_table(table, Path(path))
    return Path(path)


def _plain(value: Any) -> Any:
    """Parquet columns need one type: lists and dicts go in as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value

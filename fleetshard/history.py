"""The history database (sqlite3): runs, attempts, tests, per-file durations, learned machine speeds.

One file, ``.fleetshard/history.db`` next to the inventory unless the inventory says otherwise.
The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` holds one script per version,
applied in order in one transaction. WAL mode lets ``fleetshard history`` read while a run writes.

Every sqlite problem surfaces as :class:`~fleetshard.errors.HistoryError` with a one-line message
naming the file and what to do; the runner records history *after* writing its result files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .errors import HistoryError, UsageError
from .record import AttemptRecord, MachineRecord, RunRecord, ShardRecord, TestRecord
from .results import dumps
from .speeds import Sample

MIGRATIONS: tuple[str, ...] = (
    # v1
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        exit_code INTEGER NOT NULL,
        strategy TEXT,
        mode TEXT,
        command TEXT,
        inventory TEXT,
        argv TEXT,                      -- json list
        counts TEXT,                    -- json object
        expected_makespan REAL,
        lower_bound REAL,
        run_dir TEXT,
        "commit" TEXT,
        record TEXT NOT NULL            -- json of RunRecord.as_dict()
    );
    CREATE INDEX runs_started ON runs(started);
    CREATE TABLE machines_in_run (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        slots INTEGER,
        speed REAL,
        status TEXT,
        reason TEXT,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE attempts (
        run_id TEXT NOT NULL,
        shard_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        machine TEXT NOT NULL,
        outcome TEXT NOT NULL,
        started REAL,
        ended REAL,
        exit_status INTEGER,
        reason TEXT,
        log_path TEXT,
        speculative INTEGER NOT NULL DEFAULT 0,
        test_time REAL                  -- sum of the attempt's testcase times; NULL without JUnit
    );
    CREATE INDEX attempts_run ON attempts(run_id);
    CREATE INDEX attempts_machine ON attempts(machine);
    CREATE TABLE shards (
        run_id TEXT NOT NULL,
        id TEXT NOT NULL,
        idx INTEGER,
        total INTEGER,
        files TEXT,                     -- json list
        expected REAL,
        state TEXT,
        reason TEXT,
        flaky INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, id)
    );
    CREATE TABLE tests (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        classname TEXT,
        file TEXT,
        time REAL,
        outcome TEXT,
        machine TEXT,
        shard_id TEXT,
        attempt INTEGER,
        flaky INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tests_run ON tests(run_id);
    -- seconds one file took on one machine in one run (passed attempts only), as measured
    CREATE TABLE file_durations (
        run_id TEXT NOT NULL,
        file TEXT NOT NULL,
        machine TEXT NOT NULL,
        duration REAL NOT NULL,
        source TEXT NOT NULL            -- junit: testcase times; split: attempt time / shard files
    );
    CREATE INDEX file_durations_run ON file_durations(run_id);
    CREATE INDEX file_durations_file ON file_durations(file);
    """,
    # v2: the runner's own test id and line of each testcase
    """
    ALTER TABLE tests ADD COLUMN test_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE tests ADD COLUMN line INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_CHILD_TABLES = ("machines_in_run", "attempts", "shards", "tests", "file_durations")
_MIN_DURATION = 1e-3                  # durations below this say nothing about speed


@dataclass(frozen=True)
class FlakyTest:
    """One test's flakiness over the recent runs."""

    file: str | None
    classname: str
    name: str
    test_id: str
    runs: int                         # recent runs it was in
    flaky: int                        # runs where it failed, then passed on a retry
    failed: int                       # runs where it ended failed
    last_flaky: float | None

    @property
    def label(self) -> str:
        if self.test_id:
            return self.test_id
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass(frozen=True)
class RunSummaryRow:
    id: str
    started: float
    ended: float
    exit_code: int
    strategy: str
    mode: str
    command: str
    counts: dict[str, int] = field(default_factory=dict)
    machines: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class NotPassed:
    """What ``--resume RUN`` runs again: the files (file mode) or shard indices (native mode)."""

    run_id: str
    mode: str
    command: str
    files: list[str]
    shard_indices: list[int]
    total: int | None                 # native mode: the {total} of the original run


def display_path(path: Path) -> str:
    try:
        return os.path.relpath(path) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)
    except (OSError, ValueError):
        return str(path)


T = TypeVar("T")


def _build(cls: type[T], data: Mapping[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def record_from_dict(data: Mapping[str, Any]) -> RunRecord:
    """Rebuild a :class:`RunRecord` from ``RunRecord.as_dict()`` (unknown keys are ignored)."""
    record = _build(RunRecord, {k: v for k, v in data.items()
                                if k not in ("machines", "shards", "attempts", "tests")})
    record.machines = [_build(MachineRecord, m) for m in data.get("machines", [])]
    record.shards = [_build(ShardRecord, s) for s in data.get("shards", [])]
    record.attempts = [_build(AttemptRecord, a) for a in data.get("attempts", [])]
    record.tests = [_build(TestRecord, t) for t in data.get("tests", [])]
    return record


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script (``executescript`` would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


class History:
    """The history database at ``path`` (created with its parent directories when missing)."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(
                f"history database {self.shown} cannot be created ({exc.strerror or exc}): "
                "check the directory, or set `history:` in the inventory") from exc
        if self.path.is_dir():
            raise HistoryError(f"history database {self.shown} is a directory: "
                               "set `history:` in the inventory to a file path")
        with self._errors():
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                         check_same_thread=False)
            try:
                self._setup()
            except BaseException:
                self._conn.close()
                self._conn = None
                raise

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def shown(self) -> str:
        return display_path(self.path)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistoryError(f"history database {self.shown} is closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> History:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _translate(self, exc: sqlite3.Error) -> HistoryError:
        text = str(exc).lower()
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return HistoryError(f"history database {self.shown} is corrupt: move it away "
                                "(it will be recreated)")
        if "locked" in text or "busy" in text:
            return HistoryError(
                f"history database {self.shown} is locked by another process (waited "
                f"{self.busy_timeout:g} s): let the other fleetshard finish, then retry")
        if "unable to open" in text or "readonly" in text or "disk i/o" in text or "permission" in text:
            return HistoryError(f"history database {self.shown} cannot be opened or written ({exc}): "
                                "check the file's permissions, or set `history:` in the inventory")
        return HistoryError(f"history database {self.shown}: {exc}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _setup(self) -> None:
        conn = self.conn
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history database {self.shown} has schema version {version}, newer than this "
                f"fleetshard knows ({SCHEMA_VERSION}): upgrade fleetshard or move the file away")
        if version < SCHEMA_VERSION:
            with self._transaction():
                version = self.schema_version()          # another process may have migrated meanwhile
                for number in range(version, SCHEMA_VERSION):
                    for statement in _statements(MIGRATIONS[number]):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number + 1}")

    def schema_version(self) -> int:
        with self._errors():
            row = self.conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    # --- writing -------------------------------------------------------------------------------------

    def record_run(self, record: RunRecord) -> None:
        """Store one run (replacing an earlier copy of the same run id) in one transaction."""
        tests_by_attempt: dict[tuple[str, int, str], list[TestRecord]] = defaultdict(list)
        for test in record.tests:
            tests_by_attempt[(test.shard_id, test.attempt, test.machine)].append(test)
        shards = {s.id: s for s in record.shards}

        attempt_rows = []
        duration_rows: list[tuple[str, str, str, float, str]] = []
        for a in record.attempts:
            tests = tests_by_attempt.get((a.shard_id, a.attempt, a.machine), [])
            test_time = sum(t.time for t in tests) if tests else None
            attempt_rows.append((record.run_id, a.shard_id, a.attempt, a.machine, a.outcome, a.started,
                                 a.ended, a.exit_status, a.reason, a.log_path, int(a.speculative),
                                 test_time))
            if a.outcome != "passed":
                continue
            if tests and all(t.file for t in tests):
                per_file: dict[str, float] = defaultdict(float)
                for t in tests:
                    per_file[t.file or ""] += t.time
                duration_rows.extend((record.run_id, f, a.machine, d, "junit") for f, d in per_file.items())
            elif a.shard_id in shards and shards[a.shard_id].files:
                files = shards[a.shard_id].files
                share = a.duration / len(files)
                duration_rows.extend((record.run_id, f, a.machine, share, "split") for f in files)

        counts: dict[str, int] = dict(record.counts())
        counts.update(tests=len(record.tests),
                      tests_failed=sum(t.outcome in ("failed", "error") for t in record.tests),
                      tests_skipped=sum(t.outcome == "skipped" for t in record.tests),
                      tests_flaky=sum(t.flaky for t in record.tests))
        run_row = (record.run_id, record.started, record.ended, record.exit_code, record.strategy,
                   record.mode, record.command, record.inventory, json.dumps(record.argv),
                   json.dumps(counts), record.expected_makespan, record.lower_bound, record.run_dir,
                   record.commit, dumps(record.as_dict()))

        with self._transaction() as conn:
            for table in _CHILD_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (record.run_id,))
            conn.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", run_row)
            conn.executemany("INSERT OR REPLACE INTO machines_in_run VALUES (?,?,?,?,?,?)",
                             [(record.run_id, m.name, m.slots, m.speed, m.status, m.reason)
                              for m in record.machines])
            conn.executemany("INSERT INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", attempt_rows)
            conn.executemany("INSERT OR REPLACE INTO shards VALUES (?,?,?,?,?,?,?,?,?)",
                             [(record.run_id, s.id, s.index, s.total, json.dumps(s.files), s.expected,
                               s.state, s.reason, int(s.flaky)) for s in record.shards])
            conn.executemany("INSERT INTO tests (run_id, name, classname, file, time, outcome, machine, "
                             "shard_id, attempt, flaky, test_id, line) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                             [(record.run_id, t.name, t.classname, t.file, t.time, t.outcome, t.machine,
                               t.shard_id, t.attempt, int(t.flaky), t.id, t.line) for t in record.tests])
            conn.executemany("INSERT INTO file_durations VALUES (?,?,?,?,?)", duration_rows)

    # --- learning ------------------------------------------------------------------------------------

    def _recent_run_ids(self, limit_runs: int) -> list[str]:
        with self._errors():
            rows = self.conn.execute("SELECT id FROM runs ORDER BY started DESC LIMIT ?",
                                     (max(1, limit_runs),)).fetchall()
        return [str(r[0]) for r in rows]

    def machine_speeds(self, limit_runs: int = 20) -> dict[str, float]:
        """Learned speed per machine (higher is faster), the median machine at 1.0.

        For every file measured on two or more machines in the last ``limit_runs`` runs, each machine's
        ratio is (cross-machine median time of the file) / (its own median time of the file); a machine's
        speed is the median of its ratios. Machines that share no file with another are omitted.
        """
        with self._errors():
            rows = self.conn.execute(
                "SELECT fd.file, fd.machine, fd.duration FROM file_durations fd "
                "JOIN (SELECT id FROM runs ORDER BY started DESC LIMIT ?) r ON r.id = fd.run_id",
                (max(1, limit_runs),)).fetchall()
        samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for file, machine, duration in rows:
            if duration is not None and duration >= _MIN_DURATION:
                samples[file][machine].append(float(duration))
        ratios: dict[str, list[float]] = defaultdict(list)
        for per_machine in samples.values():
            if len(per_machine) < 2:
                continue
            medians = {m: _median(d) for m, d in per_machine.items()}
            reference = _median(list(medians.values()))
            for machine, value in medians.items():
                ratios[machine].append(reference / value)
        raw = {m: _median(r) for m, r in ratios.items()}
        if not raw:
            return {}
        middle = statistics.median_high(raw.values())
        return {m: round(v / middle, 4) for m, v in sorted(raw.items())}

    def file_durations(self, limit_runs: int = 10) -> dict[str, float]:
        """Expected seconds per test file on a speed-1.0 machine.

        Each measurement (from passed attempts) is multiplied by its machine's speed: the learned one
        (:meth:`machine_speeds`), else the speed the inventory gave it in that run, else 1.0; a file's
        value is the median of its last ``limit_runs`` measurements.
        """
        learned = self.machine_speeds()
        with self._errors():
            rows = self.conn.execute(
                """
                SELECT file, machine, duration, speed FROM (
                    SELECT fd.file, fd.machine, fd.duration, m.speed,
                           ROW_NUMBER() OVER (PARTITION BY fd.file ORDER BY r.started DESC) AS rn
                    FROM file_durations fd
                    JOIN runs r ON r.id = fd.run_id
                    LEFT JOIN machines_in_run m ON m.run_id = fd.run_id AND m.name = fd.machine
                ) WHERE rn <= ?
                """, (max(1, limit_runs),)).fetchall()
        samples: dict[str, list[float]] = defaultdict(list)
        for file, machine, duration, configured in rows:
            speed = learned.get(machine) or (configured if configured and configured > 0 else 1.0)
            samples[file].append(float(duration) * float(speed))
        return {f: round(_median(v), 4) for f, v in sorted(samples.items())}

    def speed_samples(self, limit_runs: int = 20) -> list[Sample]:
        """Every file timing of the last ``limit_runs`` runs, for :func:`fleetshard.speeds.estimate_speeds`."""
        with self._errors():
            rows = self.conn.execute(
                "SELECT fd.run_id, fd.file, fd.machine, fd.duration FROM file_durations fd "
                "JOIN (SELECT id FROM runs ORDER BY started DESC LIMIT ?) r ON r.id = fd.run_id",
                (max(1, limit_runs),)).fetchall()
        return [Sample(str(run_id), str(file), str(machine), float(duration))
                for run_id, file, machine, duration in rows if duration is not None]

    def native_work(self, command: str) -> float | None:
        """Seconds of test work at speed 1.0 in the latest native-mode run of ``command``: each deciding
        attempt's testcase time (else its duration) times its machine's speed in that run. None: no such run."""
        with self._errors():
            row = self.conn.execute("SELECT id FROM runs WHERE mode = 'native' AND command = ? "
                                    "ORDER BY started DESC LIMIT 1", (command,)).fetchone()
            if row is None:
                return None
            rows = self.conn.execute(
                "SELECT COALESCE(a.test_time, a.ended - a.started), COALESCE(m.speed, 1.0) FROM attempts a "
                "LEFT JOIN machines_in_run m ON m.run_id = a.run_id AND m.name = a.machine "
                "WHERE a.run_id = ? AND a.speculative = 0 AND a.outcome IN ('passed', 'tests-failed')",
                (row[0],)).fetchall()
        work = sum(max(0.0, float(t or 0.0)) * (float(sp) if sp and sp > 0 else 1.0) for t, sp in rows)
        return work if work > 0 else None

    def machine_startup(self, limit_runs: int = 20, command: str | None = None) -> dict[str, float]:
        """Fixed per-shard cost per machine: median of (attempt duration - its testcase times), >= 0.

        With ``command``, only runs of that suite command count (start-up is a property of the runner:
        a browser suite's is not a unit suite's), unless there are none yet."""
        query = ("SELECT a.machine, a.ended - a.started - a.test_time FROM attempts a "
                 "JOIN (SELECT id FROM runs {where} ORDER BY started DESC LIMIT ?) r ON r.id = a.run_id "
                 "WHERE a.test_time IS NOT NULL AND a.outcome IN ('passed', 'tests-failed')")
        with self._errors():
            rows = []
            if command is not None:
                rows = self.conn.execute(query.format(where="WHERE command = ?"),
                                         (command, max(1, limit_runs))).fetchall()
            if not rows:
                rows = self.conn.execute(query.format(where=""), (max(1, limit_runs),)).fetchall()
        samples: dict[str, list[float]] = defaultdict(list)
        for machine, overhead in rows:
            samples[machine].append(max(0.0, float(overhead or 0.0)))
        return {m: round(_median(v), 4) for m, v in sorted(samples.items())}

    def flaky_tests(self, limit_runs: int = 20) -> list[FlakyTest]:
        """The tests that were flaky (failed, then passed on a retry) in the recent runs, flakiest first."""
        ids = self._recent_run_ids(limit_runs)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._errors():
            rows = self.conn.execute(
                f"SELECT t.file, t.classname, t.name, MAX(t.test_id), COUNT(DISTINCT t.run_id), SUM(t.flaky), "
                f"SUM(t.outcome IN ('failed', 'error')), MAX(CASE WHEN t.flaky THEN r.started END) "
                f"FROM tests t JOIN runs r ON r.id = t.run_id WHERE t.run_id IN ({marks}) "
                f"GROUP BY t.file, t.classname, t.name HAVING SUM(t.flaky) > 0 "
                f"ORDER BY SUM(t.flaky) DESC, SUM(t.outcome IN ('failed', 'error')) DESC, t.name", ids).fetchall()
        return [FlakyTest(file=file, classname=classname or "", name=name, test_id=test_id or "", runs=int(runs),
                          flaky=int(flaky), failed=int(failed or 0), last_flaky=float(last) if last else None)
                for file, classname, name, test_id, runs, flaky, failed, last in rows]

    def test_durations(self, limit_runs: int = 10) -> dict[str, float]:
        """Median seconds per test id (runner suites) over the recent runs, from passed testcases."""
        ids = self._recent_run_ids(limit_runs)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._errors():
            rows = self.conn.execute(
                f"SELECT test_id, time FROM tests WHERE run_id IN ({marks}) AND test_id != '' "
                f"AND outcome = 'passed' AND time IS NOT NULL", ids).fetchall()
        samples: dict[str, list[float]] = defaultdict(list)
        for test_id, seconds in rows:
            samples[str(test_id)].append(float(seconds))
        return {t: _median(v) for t, v in samples.items()}

    # --- reading -------------------------------------------------------------------------------------

    def runs(self, limit: int = 20) -> list[RunSummaryRow]:
        """The most recent runs, newest first."""
        with self._errors():
            rows = self.conn.execute(
                "SELECT id, started, ended, exit_code, strategy, mode, command, counts FROM runs "
                "ORDER BY started DESC LIMIT ?", (max(1, limit),)).fetchall()
            ids = [r[0] for r in rows]
            machines: dict[str, list[str]] = defaultdict(list)
            if ids:
                marks = ",".join("?" * len(ids))
                for run_id, name in self.conn.execute(
                        f"SELECT run_id, name FROM machines_in_run WHERE run_id IN ({marks}) "
                        "ORDER BY rowid", ids):
                    machines[run_id].append(name)
        return [RunSummaryRow(id=r[0], started=r[1], ended=r[2], exit_code=r[3], strategy=r[4] or "",
                              mode=r[5] or "", command=r[6] or "", counts=json.loads(r[7] or "{}"),
                              machines=machines.get(r[0], [])) for r in rows]

    def resolve(self, run_id: str | None) -> str:
        """The full id of ``run_id`` (an id or a unique prefix; None = the latest run)."""
        with self._errors():
            if run_id is None:
                row = self.conn.execute("SELECT id FROM runs ORDER BY started DESC LIMIT 1").fetchone()
                if row is None:
                    raise UsageError(f"no runs recorded yet in {self.shown}")
                return str(row[0])
            if self.conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                return run_id
            escaped = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            hits = [str(r[0]) for r in self.conn.execute(
                "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",))]
        if len(hits) == 1:
            return hits[0]
        recent = ", ".join(r.id for r in self.runs(5)) or "none"
        problem = "is ambiguous" if hits else "not found"
        raise UsageError(f"run {run_id!r} {problem} in {self.shown} (recent runs: {recent})")

    def get_run(self, run_id: str | None = None) -> RunRecord:
        """The stored record of a run (None = the latest). Unknown id: UsageError listing recent ids."""
        full = self.resolve(run_id)
        with self._errors():
            row = self.conn.execute("SELECT record FROM runs WHERE id = ?", (full,)).fetchone()
        try:
            return record_from_dict(json.loads(row[0]))
        except (TypeError, ValueError, AttributeError) as exc:
            raise HistoryError(f"history database {self.shown}: the record of run {full} is unreadable "
                               f"({exc}): move the file away (it will be recreated)") from exc

    def not_passed(self, run_id: str | None) -> NotPassed:
        """What did not pass in a run: its failed and not-run shards' files, or their indices."""
        full = self.resolve(run_id)
        with self._errors():
            mode, command = self.conn.execute("SELECT mode, command FROM runs WHERE id = ?",
                                              (full,)).fetchone()
            rows = self.conn.execute("SELECT idx, total, files FROM shards WHERE run_id = ? "
                                     "AND state != 'passed' ORDER BY idx", (full,)).fetchall()
            total_row = self.conn.execute("SELECT MAX(total) FROM shards WHERE run_id = ?", (full,)).fetchone()
        files: list[str] = []
        for _, _, files_json in rows:
            for f in json.loads(files_json or "[]"):
                if f not in files:
                    files.append(f)
        total = total_row[0] if total_row and total_row[0] is not None else None
        return NotPassed(run_id=full, mode=mode or "", command=command or "", files=files,
                         shard_indices=[int(r[0]) for r in rows if r[0] is not None],
                         total=int(total) if total is not None else None)

"""The history database: round trip, learned durations / speeds / start-up, failures as HistoryError."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from fleetshard.errors import HistoryError, UsageError
from fleetshard.history import SCHEMA_VERSION, History
from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord, TestRecord

T0 = 1_700_000_000.0

# (shard id, machine, {file: seconds of its tests}, start-up seconds)
Work = tuple[str, str, Mapping[str, float], float]


def make_run(run_id: str, started: float, work: Sequence[Work], *, speeds: Mapping[str, float] | None = None,
             with_tests: bool = True) -> RunRecord:
    shards, attempts, tests = [], [], []
    clock = started
    for index, (shard_id, machine, files, startup) in enumerate(work, start=1):
        duration = startup + sum(files.values())
        shards.append(ShardRecord(shard_id, index, len(work), list(files), None, "passed"))
        attempts.append(AttemptRecord(shard_id, 1, machine, "passed", clock, clock + duration, exit_status=0,
                                      log_path=f"logs/{shard_id}.log"))
        if with_tests:
            for file, seconds in files.items():
                # two testcases per file, splitting its time
                for n in range(2):
                    tests.append(TestRecord(f"test_{n}", file.replace("/", ".")[:-3], file, seconds / 2,
                                            "passed", shard_id, 1, machine))
        clock += duration
    machines = sorted({w[1] for w in work})
    return RunRecord(run_id=run_id, started=started, ended=clock, argv=["run"], inventory="machines.yaml",
                     strategy="dynamic", mode="files", command="pytest {files}", exit_code=0,
                     machines=[MachineRecord(m, 2, (speeds or {}).get(m, 1.0), "healthy") for m in machines],
                     shards=shards, attempts=attempts, tests=tests, expected_makespan=10.0, lower_bound=8.0,
                     run_dir=f"runs/{run_id}", commit="abc123")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "dir" / "history.db"


def test_creates_schema_with_version(db: Path) -> None:
    with History(db) as history:
        assert history.schema_version() == SCHEMA_VERSION == 2
        mode = history.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        tables = {r[0] for r in history.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "machines_in_run", "attempts", "shards", "tests", "file_durations"} <= tables
    # reopening does not migrate again
    with History(db) as history:
        assert history.schema_version() == 2
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_round_trip(db: Path) -> None:
    record = make_run("r1", T0, [("s001", "a", {"tests/test_a.py": 4.0}, 1.0),
                                 ("s002", "b", {"tests/test_b.py": 2.0, "tests/test_c.py": 3.0}, 1.0)])
    record.attempts.append(AttemptRecord("s002", 2, "a", "cancelled", T0 + 1, T0 + 2, speculative=True,
                                         artifacts=["out/trace.zip"]))
    record.notes.append("shard s009 produced no JUnit XML")
    record.tests[0].flaky = True
    later = make_run("r2", T0 + 100, [("s001", "a", {"tests/test_a.py": 4.0}, 1.0)])
    later.exit_code = 1
    later.shards[0].state = "failed"
    with History(db) as history:
        history.record_run(record)
        history.record_run(later)
        history.record_run(record)                 # recording again replaces, never duplicates
        assert history.get_run("r1") == record
        assert history.get_run(None) == later       # latest
        rows = history.runs(10)
        assert [r.id for r in rows] == ["r2", "r1"]
        assert rows[1].machines == ["a", "b"] and rows[1].exit_code == 0
        assert rows[1].counts["passed"] == 2 and rows[1].counts["tests"] == 6
        assert rows[1].counts["tests_flaky"] == 1
        assert rows[1].duration == pytest.approx(record.duration)
        assert history.conn.execute("SELECT COUNT(*) FROM attempts WHERE run_id='r1'").fetchone()[0] == 3
        assert history.runs(1)[0].id == "r2"


def test_unknown_run_lists_recent_ids_and_prefix_resolves(db: Path) -> None:
    with History(db) as history:
        with pytest.raises(UsageError, match="no runs recorded yet"):
            history.get_run(None)
        history.record_run(make_run("20240101-aaaa", T0, [("s001", "a", {"t/test_a.py": 1.0}, 0.1)]))
        history.record_run(make_run("20240102-bbbb", T0 + 10, [("s001", "a", {"t/test_a.py": 1.0}, 0.1)]))
        assert history.get_run("20240102").run_id == "20240102-bbbb"
        with pytest.raises(UsageError) as info:
            history.get_run("nope")
        assert "20240101-aaaa" in str(info.value) and "20240102-bbbb" in str(info.value)
        with pytest.raises(UsageError, match="ambiguous"):
            history.get_run("2024")
        with pytest.raises(UsageError, match="not found"):
            history.get_run("2024_")                # LIKE wildcards are taken literally


def test_not_passed(db: Path) -> None:
    files_run = make_run("f", T0, [("s001", "a", {"t/test_a.py": 1.0}, 0.1),
                                   ("s002", "a", {"t/test_b.py": 1.0, "t/test_c.py": 1.0}, 0.1),
                                   ("s003", "b", {"t/test_d.py": 1.0}, 0.1)])
    files_run.shards[1].state = "failed"
    files_run.shards[2].state = "not-run"
    native = make_run("n", T0 + 10, [("s001", "a", {}, 1.0), ("s002", "a", {}, 1.0), ("s003", "b", {}, 1.0)])
    native.mode = "native"
    native.command = "npx playwright test --shard={shard}/{total}"
    native.shards[0].state = "not-run"
    native.shards[2].state = "failed"
    with History(db) as history:
        history.record_run(files_run)
        history.record_run(native)
        result = history.not_passed("f")
        assert result.files == ["t/test_b.py", "t/test_c.py", "t/test_d.py"]
        assert result.mode == "files" and result.command == "pytest {files}"
        result = history.not_passed("n")
        assert result.mode == "native" and result.shard_indices == [1, 3] and result.total == 3
        assert result.files == []


def test_learns_speeds_durations_and_startup(db: Path) -> None:
    files = {"t/test_1.py": 10.0, "t/test_2.py": 20.0, "t/test_3.py": 4.0}
    slow = {f: 2 * s for f, s in files.items()}                 # machine b is twice as slow
    with History(db) as history:
        assert history.machine_speeds() == {} and history.file_durations() == {}
        history.record_run(make_run("r1", T0, [("s001", "a", {"t/test_1.py": 10.0, "t/test_3.py": 4.0}, 1.0),
                                               ("s002", "b", {"t/test_2.py": 40.0}, 3.0)]))
        history.record_run(make_run("r2", T0 + 100, [("s001", "b", {"t/test_1.py": 20.0}, 3.0),
                                                     ("s002", "a", {"t/test_2.py": 20.0}, 1.0),
                                                     ("s003", "b", {"t/test_3.py": 8.0}, 3.0)]))
        # a third machine that never shares a file with the others
        history.record_run(make_run("r3", T0 + 200, [("s001", "c", {"t/test_9.py": 5.0}, 0.5)]))
        speeds = history.machine_speeds()
        assert set(speeds) == {"a", "b"}
        assert speeds["b"] / speeds["a"] == pytest.approx(0.5)
        assert max(speeds.values()) == pytest.approx(1.0) or min(speeds.values()) == pytest.approx(1.0)
        durations = history.file_durations()
        for file, seconds in files.items():
            assert durations[file] == pytest.approx(seconds * speeds["a"])
            assert slow[file] * speeds["b"] == pytest.approx(durations[file])
        assert durations["t/test_9.py"] == pytest.approx(5.0)       # configured speed 1.0
        startup = history.machine_startup()
        assert startup == pytest.approx({"a": 1.0, "b": 3.0, "c": 0.5})


def test_speed_samples_native_work_and_startup_per_command(db: Path) -> None:
    with History(db) as history:
        assert history.speed_samples() == [] and history.native_work("npx playwright test") is None
        history.record_run(make_run("r1", T0, [("s001", "a", {"t/test_1.py": 10.0}, 1.0),
                                               ("s002", "b", {"t/test_2.py": 40.0}, 3.0)], speeds={"b": 0.5}))
        native = make_run("r2", T0 + 100, [("s001", "a", {"t/a.spec.ts": 6.0}, 7.0),
                                           ("s002", "b", {"t/b.spec.ts": 8.0}, 9.0)], speeds={"b": 0.5})
        native.mode, native.command = "native", "npx playwright test --shard={shard}/{total}"
        history.record_run(native)
        samples = history.speed_samples()
        assert {(s.run_id, s.file, s.machine, s.duration) for s in samples} >= {
            ("r1", "t/test_1.py", "a", 10.0), ("r2", "t/b.spec.ts", "b", 8.0)}
        # 6 s on a at speed 1 + 8 s on b at speed 0.5
        assert history.native_work(native.command) == pytest.approx(10.0)
        assert history.native_work("something else") is None
        assert history.machine_startup(command=native.command) == pytest.approx({"a": 7.0, "b": 9.0})
        assert history.machine_startup(command="pytest {files}") == pytest.approx({"a": 1.0, "b": 3.0})
        assert history.machine_startup(command="never run") == pytest.approx({"a": 4.0, "b": 6.0})


def test_durations_without_junit_split_the_attempt(db: Path) -> None:
    run = make_run("r1", T0, [("s001", "a", {"t/test_1.py": 3.0, "t/test_2.py": 3.0}, 2.0)],
                   speeds={"a": 2.0}, with_tests=False)
    failed = make_run("r0", T0 - 100, [("s001", "a", {"t/test_1.py": 100.0}, 0.0)], with_tests=False)
    failed.attempts[0].outcome = "tests-failed"                  # failed attempts teach nothing
    with History(db) as history:
        history.record_run(failed)
        history.record_run(run)
        # 8 s over two files, times the configured speed 2.0 (nothing learned yet)
        assert history.file_durations() == {"t/test_1.py": 8.0, "t/test_2.py": 8.0}
        assert history.machine_startup() == {}


def test_file_durations_median_of_recent_runs(db: Path) -> None:
    with History(db) as history:
        for i, seconds in enumerate([100.0, 1.0, 2.0, 3.0]):
            history.record_run(make_run(f"r{i}", T0 + i * 100, [("s001", "a", {"t/test_1.py": seconds}, 0.0)]))
        assert history.file_durations(limit_runs=3) == {"t/test_1.py": 2.0}
        assert history.file_durations(limit_runs=1) == {"t/test_1.py": 3.0}


def test_corrupt_database(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not sqlite, just garbage bytes \x00\xff" * 200)
    with pytest.raises(HistoryError) as info:
        History(path)
    message = str(info.value)
    assert str(path) in message or "history.db" in message
    assert "corrupt" in message and "move it away" in message
    assert "\n" not in message


def test_locked_database(db: Path) -> None:
    History(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        began = time.monotonic()
        run = make_run("r1", T0, [("s001", "a", {"t/test_a.py": 1.0}, 0.1)])
        with pytest.raises(HistoryError, match="locked") as info, History(db, busy_timeout=0.2) as history:
            history.record_run(run)
        assert time.monotonic() - began < 3
        assert "history.db" in str(info.value)
        other.execute("ROLLBACK")
    finally:
        other.close()
    with History(db) as history:                # usable again once the other process lets go
        assert history.runs(5) == []


def test_locked_database_during_creation(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    other = sqlite3.connect(path, isolation_level=None)     # rollback journal: an exclusive lock blocks reads
    try:
        other.execute("CREATE TABLE x (y)")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(HistoryError, match="locked"):
            History(path, busy_timeout=0.1)
    finally:
        other.close()


def test_unusable_paths(tmp_path: Path) -> None:
    (tmp_path / "a-dir.db").mkdir()
    with pytest.raises(HistoryError, match="directory"):
        History(tmp_path / "a-dir.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HistoryError, match="cannot be created"):
        History(tmp_path / "file" / "history.db")


def test_newer_schema_is_refused(db: Path) -> None:
    History(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HistoryError, match="newer"):
        History(db)


def test_records_10000_attempts_quickly(db: Path) -> None:
    shards = [ShardRecord(f"s{i:05d}", i + 1, 2500, [f"t/test_{i}.py"], 1.0, "passed") for i in range(2500)]
    attempts = []
    tests = []
    for i, shard in enumerate(shards):
        for n in range(1, 5):
            outcome = "passed" if n == 4 else "infra-failed"
            attempts.append(AttemptRecord(shard.id, n, f"m{i % 8}", outcome, T0 + n, T0 + n + 0.5,
                                          exit_status=0 if n == 4 else 255, reason="x" * 40,
                                          log_path=f"/tmp/logs/{shard.id}-{n}.log"))
            tests.append(TestRecord(f"test_{n}", f"t.test_{i}", shard.files[0], 0.1, "passed", shard.id, 4,
                                    f"m{i % 8}"))
    record = RunRecord("big", T0, T0 + 10, ["run"], "machines.yaml", "dynamic", "files", "pytest {files}", 0,
                       machines=[MachineRecord(f"m{i}", 4, 1.0, "healthy") for i in range(8)],
                       shards=shards, attempts=attempts, tests=tests)
    with History(db) as history:
        timings = []
        for _ in range(2):                        # the second time replaces the first; best of two
            began = time.perf_counter()
            history.record_run(record)
            timings.append(time.perf_counter() - began)
        elapsed = min(timings)
        assert history.conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 10_000
        assert history.conn.execute("SELECT COUNT(*) FROM tests").fetchone()[0] == 10_000
    # a sanity bound, not a benchmark (a busy shared machine must not fail it): well under a second here
    assert elapsed < 5.0, f"recording 10 000 attempts took {elapsed:.2f} s"
